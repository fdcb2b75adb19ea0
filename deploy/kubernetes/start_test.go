package kubernetes

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	yamlv3 "gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/authproxy/authproxy/ca"
	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/internal/proctest"
)

// proxyPod is a pod spec that runs the proxy, with what the test needs of
// its manifest.
type proxyPod struct {
	name       string
	spec       corev1.PodSpec
	container  corev1.Container
	configMaps map[string]*corev1.ConfigMap
}

func proxyPods(t *testing.T, file string) []proxyPod {
	objs := objects(t, file)
	cms := map[string]*corev1.ConfigMap{}
	for _, o := range objs {
		if cm, ok := o.(*corev1.ConfigMap); ok {
			cms[cm.Name] = cm
		}
	}
	var out []proxyPod
	for _, o := range objs {
		var spec corev1.PodSpec
		var name string
		switch o := o.(type) {
		case *corev1.Pod:
			spec, name = o.Spec, o.Name
		case *appsv1.Deployment:
			spec, name = o.Spec.Template.Spec, o.Name
		default:
			continue
		}
		for _, c := range append(spec.InitContainers, spec.Containers...) {
			if c.Name == "authproxy" {
				out = append(out, proxyPod{name: name, spec: spec, container: c, configMaps: cms})
			}
		}
	}
	return out
}

// ids are the user, group and supplementary groups the container runs
// as, and the fsGroup its volumes are given.
type ids struct {
	uid, gid uint32
	groups   []uint32
	fsGroup  *uint32
}

func (p proxyPod) ids(t *testing.T) ids {
	sc := p.container.SecurityContext
	if sc == nil || sc.RunAsUser == nil || sc.RunAsGroup == nil {
		t.Fatalf("%s: the proxy's container sets no runAsUser and runAsGroup", p.name)
	}
	id := ids{uid: uint32(*sc.RunAsUser), gid: uint32(*sc.RunAsGroup)}
	if psc := p.spec.SecurityContext; psc != nil {
		if psc.FSGroup != nil {
			g := uint32(*psc.FSGroup)
			id.fsGroup = &g
			id.groups = append(id.groups, g)
		}
		for _, g := range psc.SupplementalGroups {
			id.groups = append(id.groups, uint32(g))
		}
	}
	return id
}

// content makes what a secret file of the config holds: the CA pair, a
// Zitadel service-account key, or a random string (a token, a password,
// a cache key of 64 characters).
func content(t *testing.T, cfg *config.Config, path string, made map[string][]byte) []byte {
	if b, ok := made[path]; ok {
		return b
	}
	if cfg.CA != nil && (path == cfg.CA.CertFile || path == cfg.CA.KeyFile) {
		dir := t.TempDir()
		cert, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
		if err := ca.Create(cert, key, "manifest test CA", false); err != nil {
			t.Fatal(err)
		}
		made[cfg.CA.CertFile], _ = os.ReadFile(cert)
		made[cfg.CA.KeyFile], _ = os.ReadFile(key)
		return made[path]
	}
	for _, cl := range cfg.Clients {
		if cl.JWT != nil && path == cl.JWT.JWKSCAFile { // the cluster's CA (kube-root-ca.crt)
			certPEM, _, err := ca.NewCAPEM("manifest test cluster CA", time.Now(), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			made[path] = certPEM
			return certPEM
		}
	}
	if strings.HasSuffix(path, ".json") {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
		made[path], _ = json.Marshal(map[string]string{"type": "serviceaccount", "keyId": "k1", "key": string(pemKey), "userId": "u1"})
		return made[path]
	}
	b := make([]byte, 32)
	rand.Read(b)
	made[path] = []byte(hex.EncodeToString(b) + "\n")
	return made[path]
}

// layOut writes a Secret or ConfigMap volume as the kubelet does: the
// files in a timestamped directory, a ..data link to it and a link per key
// through ..data; files root-owned with the volume's defaultMode (0644 by
// default), and with an fsGroup given to that group and made readable by
// it (the kubelet's SetVolumeOwnership on a read-only volume), directories
// setgid in it. As another user than root, the files are the test's and
// the fsGroup is its own group.
func layOut(t *testing.T, dir string, files map[string][]byte, defaultMode *int32, id ids) {
	mode := os.FileMode(0o644)
	if defaultMode != nil {
		mode = os.FileMode(*defaultMode)
	}
	stamp := filepath.Join(dir, "..2026_12_07_16_00_00.000000001")
	for _, d := range []string{dir, stamp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	own := func(p string, m os.FileMode, isDir bool) {
		if id.fsGroup != nil {
			if os.Geteuid() == 0 {
				if err := os.Lchown(p, 0, int(*id.fsGroup)); err != nil {
					t.Fatal(err)
				}
			}
			if isDir {
				m |= os.ModeSetgid | 0o550
			} else {
				m |= 0o440
			}
		}
		if err := os.Chmod(p, m); err != nil {
			t.Fatal(err)
		}
	}
	for key, b := range files {
		p := filepath.Join(stamp, key)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		own(p, mode, false)
		if err := os.Symlink(filepath.Join("..data", key), filepath.Join(dir, key)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Base(stamp), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	own(stamp, 0o755, true)
	own(dir, 0o755, true)
}

// rewrite makes the manifest's config run on this machine and nowhere
// else: every file path under a mount is moved under root, every listener
// and the admin listener bind 127.0.0.1:0, a shared store is a closed port
// on loopback, and every host the proxy could call is pinned to
// 127.0.0.1 (the obh preset's issuer among them), so nothing leaves the
// machine. Nothing else changes.
func rewrite(t *testing.T, text, root string, mounts []string) string {
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatal(err)
	}
	var hosts []string
	var walk func(n *yamlv3.Node, key string)
	walk = func(n *yamlv3.Node, key string) {
		switch n.Kind {
		case yamlv3.DocumentNode, yamlv3.SequenceNode:
			for _, c := range n.Content {
				walk(c, key)
			}
		case yamlv3.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], n.Content[i].Value)
			}
		case yamlv3.ScalarNode:
			for _, m := range mounts {
				if strings.HasPrefix(n.Value, m+"/") {
					n.Value = root + n.Value
				}
			}
			switch key {
			case "address":
				if strings.Contains(n.Value, "valkey") || strings.Contains(n.Value, "redis") {
					n.Value = "127.0.0.1:1"
				} else {
					n.Value = "127.0.0.1:0"
				}
			case "upstream", "token_url", "base_url", "agts_url", "ats_url", "jwks_url":
				if i := strings.Index(n.Value, "://"); i >= 0 {
					hosts = append(hosts, strings.Split(strings.SplitN(n.Value[i+3:], "/", 2)[0], ":")[0])
				}
			case "host", "endpoint":
				hosts = append(hosts, strings.Split(n.Value, ":")[0])
			case "preset":
				if n.Value == "obh" {
					hosts = append(hosts, "auth.obh-mobility.com")
				}
			}
		}
	}
	walk(&doc, "")
	out, err := yamlv3.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	var pins []string
	for _, h := range hosts {
		if h != "" && !strings.Contains(h, "*") {
			pins = append(pins, fmt.Sprintf("%q: 127.0.0.1", h))
		}
	}
	if strings.Contains(string(out), "\nupstream:") {
		t.Fatal("the config has an upstream block: teach rewrite to add pins to it")
	}
	return string(out) + "upstream: {resolve: {" + strings.Join(pins, ", ") + "}}\n"
}

// Every manifest starts as written: its Secret and ConfigMap volumes laid
// out as the kubelet lays them out (..data links, defaultMode, root
// ownership, the group-read bit and group that fsGroup forces), check and
// run from the manifest's own config as the container's user and groups,
// until /healthz answers 200, and /readyz too where no issuer must be
// reached first.
func TestManifestsStartAsWritten(t *testing.T) {
	binary := buildProxy(t)
	files, _ := filepath.Glob("*.yaml")
	started := 0
	for _, file := range files {
		for _, pod := range proxyPods(t, file) {
			t.Run(file+"/"+pod.name, func(t *testing.T) {
				startPod(t, binary, pod)
				started++
			})
		}
	}
	if started < len(files) {
		t.Errorf("%d proxies started from %d manifests", started, len(files))
	}
}

// buildProxy builds the authproxy binary where the container's user can
// run it.
func buildProxy(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(bin, "authproxy")
	if out, err := exec.Command("go", "build", "-o", binary, "github.com/authproxy/authproxy/cmd/authproxy").CombinedOutput(); err != nil {
		t.Fatalf("building authproxy: %v\n%s", err, out)
	}
	// The container's user passes through the test's directories.
	os.Chmod(filepath.Dir(bin), 0o755)
	os.Chmod(filepath.Dir(filepath.Dir(bin)), 0o755)
	return binary
}

func startPod(t *testing.T, binary string, pod proxyPod) {
	id := pod.ids(t)
	asRoot := os.Geteuid() == 0
	if !asRoot { // the files are the test's own, in its own group
		g := uint32(os.Getegid())
		id = ids{uid: uint32(os.Geteuid()), gid: g, fsGroup: &g}
	}
	root := t.TempDir()
	for _, d := range []string{root, filepath.Dir(root)} { // the container's user passes through
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var cfgPath string
	for _, e := range pod.container.Env {
		if e.Name == "AUTHPROXY_CONFIG" {
			cfgPath = e.Value
		}
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.spec.Volumes {
		volumes[v.Name] = v
	}
	var mounts []string
	for _, m := range pod.container.VolumeMounts {
		mounts = append(mounts, m.MountPath)
	}
	// The config, from its ConfigMap, decides what the Secrets hold.
	var cfgText string
	for _, m := range pod.container.VolumeMounts {
		if v := volumes[m.Name]; v.ConfigMap != nil && filepath.Dir(cfgPath) == m.MountPath {
			cfgText = pod.configMaps[v.ConfigMap.Name].Data[filepath.Base(cfgPath)]
		}
	}
	cfg, err := config.Parse([]byte(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	wanted := configFiles(cfg)
	made := map[string][]byte{}
	for _, m := range pod.container.VolumeMounts {
		v := volumes[m.Name]
		dir := root + m.MountPath
		switch {
		case v.ConfigMap != nil:
			data := map[string][]byte{}
			for k, s := range pod.configMaps[v.ConfigMap.Name].Data {
				data[k] = []byte(rewrite(t, s, root, mounts))
			}
			layOut(t, dir, data, v.ConfigMap.DefaultMode, id)
		case v.Secret != nil:
			data := map[string][]byte{}
			for _, f := range wanted {
				if filepath.Dir(f) == m.MountPath {
					data[filepath.Base(f)] = content(t, cfg, f, made)
				}
			}
			layOut(t, dir, data, v.Secret.DefaultMode, id)
		case v.Projected != nil:
			// The kubelet writes every source's files into one volume: a
			// service-account token at its path, a ConfigMap's or a
			// Secret's keys at their items' paths.
			provided := map[string]bool{}
			for _, src := range v.Projected.Sources {
				switch {
				case src.ServiceAccountToken != nil:
					provided[src.ServiceAccountToken.Path] = true
				case src.ConfigMap != nil:
					for _, it := range src.ConfigMap.Items {
						provided[it.Path] = true
					}
				case src.Secret != nil:
					for _, it := range src.Secret.Items {
						provided[it.Path] = true
					}
				}
			}
			data := map[string][]byte{}
			for _, f := range wanted {
				if filepath.Dir(f) == m.MountPath {
					if !provided[filepath.Base(f)] {
						t.Errorf("%s: no source of projected volume %s writes %s", f, m.Name, filepath.Base(f))
					}
					data[filepath.Base(f)] = content(t, cfg, f, made)
				}
			}
			layOut(t, dir, data, v.Projected.DefaultMode, id)
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			os.Chmod(dir, 0o777)
		default:
			t.Fatalf("volume %s: a kind this test does not lay out", m.Name)
		}
	}
	// Every directory above the mounts can be passed through.
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() && info.Mode().Perm()&0o011 != 0o011 && !strings.Contains(p, "..") {
			os.Chmod(p, info.Mode().Perm()|0o711)
		}
		return nil
	})

	run := func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, binary, args...)
		cmd.Env = []string{"AUTHPROXY_CONFIG=" + root + cfgPath, "PATH=/usr/bin:/bin"}
		cmd.Dir = root
		if asRoot {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: id.uid, Gid: id.gid, Groups: id.groups}}
		}
		return cmd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := run(ctx, "check").CombinedOutput(); err != nil {
		t.Fatalf("check as uid %d, groups %d %v: %v\n%s", id.uid, id.gid, id.groups, err, out)
	}
	proc := proctest.Start(t, run(ctx, "run"))
	addr := proc.Await(t, regexp.MustCompile(`listener=admin address=(\S+)`), 60*time.Second)[1]
	paths := []string{"/healthz"}
	if !strings.Contains(cfgText, "warm: true") {
		paths = append(paths, "/readyz")
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	for _, path := range paths {
		deadline := time.Now().Add(60 * time.Second)
		for {
			resp, err := client.Get("http://" + addr + path)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never answered 200 (%v):\n%s", path, err, proc.Logs())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Exec probes run as the kubelet runs them: the image's binary, in the
	// container, as its user, with its environment.
	for kind, p := range map[string]*corev1.Probe{"startup": pod.container.StartupProbe, "liveness": pod.container.LivenessProbe} {
		if p == nil || p.Exec == nil {
			continue
		}
		if kind == "startup" && strings.Contains(cfgText, "warm: true") {
			continue // ready only once an issuer, which is not here, answers
		}
		if p.Exec.Command[0] != "/authproxy" {
			t.Fatalf("%s probe runs %s, not the image's binary", kind, p.Exec.Command[0])
		}
		// -addr: the test moved the admin listener to a free port.
		if out, err := run(ctx, append(p.Exec.Command[1:], "-addr", addr)...).CombinedOutput(); err != nil {
			t.Errorf("the %s probe %q failed: %v\n%s\n%s", kind, p.Exec.Command, err, out, proc.Logs())
		}
	}
	if l := proc.Logs(); strings.Contains(l, "no such host") || strings.Contains(l, "lookup ") {
		t.Errorf("the proxy looked a name up (a host the rewrite did not pin):\n%s", l)
	}
}
