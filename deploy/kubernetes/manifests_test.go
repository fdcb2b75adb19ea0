// Package kubernetes holds the manifests in this directory; its test
// decodes each of them strictly into the Kubernetes API types and checks
// that they fit the proxy they run.
package kubernetes

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	yamlv3 "gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/authproxy/authproxy/config"
	"github.com/authproxy/authproxy/injectors"
)

// objects decodes every document of a manifest file strictly: an unknown
// or misspelt field, or a kind not known here, fails.
func objects(t *testing.T, file string) []any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	var out []any
	for {
		var n yamlv3.Node
		if err := dec.Decode(&n); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		doc, err := yamlv3.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ConfigMap":
			obj = &corev1.ConfigMap{}
		case "v1 Pod":
			obj = &corev1.Pod{}
		case "v1 Service":
			obj = &corev1.Service{}
		case "apps/v1 Deployment":
			obj = &appsv1.Deployment{}
		case "policy/v1 PodDisruptionBudget":
			obj = &policyv1.PodDisruptionBudget{}
		case "networking.k8s.io/v1 NetworkPolicy":
			obj = &networkingv1.NetworkPolicy{}
		case "monitoring.coreos.com/v1 PodMonitor":
			obj = &podMonitor{}
		case "monitoring.coreos.com/v1 ServiceMonitor":
			obj = &serviceMonitor{}
		default:
			t.Fatalf("%s: a %s %s is not known to this test", file, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s: %s: %v", file, tm.Kind, err)
		}
		out = append(out, obj)
	}
	return out
}

func TestManifests(t *testing.T) {
	files, _ := filepath.Glob("*.yaml")
	if len(files) < 2 {
		t.Fatalf("manifests: %v", files)
	}
	pods := 0
	for _, file := range files {
		t.Run(file, func(t *testing.T) { pods += checkManifest(t, file) })
	}
	if pods < 2 {
		t.Errorf("%d pod specs checked, want the sidecar pod and the gateway", pods)
	}
}

// checkManifest checks the objects of one manifest file against each other
// and against the proxy they run; it returns the pod specs it checked.
func checkManifest(t *testing.T, file string) (pods int) {
	objs := objects(t, file)
	configMaps := map[string]*corev1.ConfigMap{}
	for _, o := range objs {
		if cm, ok := o.(*corev1.ConfigMap); ok {
			configMaps[cm.Name] = cm
		}
	}
	// The pod templates of the file: the proxy's, and others (a
	// shared token store) that its Services and policies may name.
	type podInfo struct {
		name   string
		labels map[string]string
		ports  []corev1.ContainerPort
		proxy  bool
	}
	var all []podInfo
	var gateway *podInfo
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Pod:
			checkPod(t, o.Spec, configMaps)
			pods++
		case *appsv1.Deployment:
			sel, err := metav1.LabelSelectorAsSelector(o.Spec.Selector)
			if err != nil || !sel.Matches(labels.Set(o.Spec.Template.Labels)) {
				t.Errorf("deployment %s: its selector does not match its template (%v)", o.Name, err)
			}
			info := podInfo{name: o.Name, labels: o.Spec.Template.Labels, ports: o.Spec.Template.Spec.Containers[0].Ports}
			for _, c := range o.Spec.Template.Spec.Containers {
				info.proxy = info.proxy || c.Name == "authproxy"
			}
			all = append(all, info)
			if !info.proxy {
				checkStore(t, o)
				continue
			}
			if o.Spec.Replicas == nil || *o.Spec.Replicas < 2 {
				t.Errorf("deployment %s: a gateway needs at least 2 replicas", o.Name)
			}
			checkPod(t, o.Spec.Template.Spec, configMaps)
			gateway = &all[len(all)-1]
			pods++
		}
	}
	// selected is the pod template a selector picks (nil: none).
	selected := func(sel labels.Selector) *podInfo {
		for i := range all {
			if sel.Matches(labels.Set(all[i].labels)) {
				return &all[i]
			}
		}
		return nil
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Service:
			pod := selected(labels.SelectorFromSet(o.Spec.Selector))
			if pod == nil {
				t.Errorf("service %s selects no pod of the file", o.Name)
				continue
			}
			for _, p := range o.Spec.Ports {
				if !hasPort(pod.ports, p.TargetPort.String()) {
					t.Errorf("service %s: target port %s is no container port of %s", o.Name, p.TargetPort.String(), pod.name)
				}
			}
		case *policyv1.PodDisruptionBudget:
			sel, err := metav1.LabelSelectorAsSelector(o.Spec.Selector)
			if err != nil || gateway == nil || !sel.Matches(labels.Set(gateway.labels)) {
				t.Errorf("pdb %s selects no gateway pod", o.Name)
			}
		case *networkingv1.NetworkPolicy:
			sel, err := metav1.LabelSelectorAsSelector(&o.Spec.PodSelector)
			pod := selected(sel)
			if err != nil || pod == nil {
				t.Errorf("network policy %s selects no pod of the file", o.Name)
				continue
			}
			for _, rule := range o.Spec.Ingress {
				admin := false
				for _, p := range rule.Ports {
					if p.Port == nil || !hasPort(pod.ports, p.Port.String()) {
						t.Errorf("network policy %s opens %v, not a port %s serves", o.Name, p.Port, pod.name)
					}
					admin = admin || p.Port != nil && p.Port.IntValue() == 15000
				}
				if admin && len(rule.Ports) != 1 {
					t.Errorf("network policy %s opens the admin port in a rule with other ports", o.Name)
				}
				for _, peer := range rule.From {
					if admin {
						// The admin port (/status, /metrics): one namespace,
						// the monitoring one, never every pod.
						if peer.NamespaceSelector == nil || peer.IPBlock != nil || len(peer.NamespaceSelector.MatchLabels) == 0 ||
							peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == "" {
							t.Errorf("network policy %s opens the admin port to more than a named namespace: %+v", o.Name, peer)
						}
						continue
					}
					if pod.proxy && peer.PodSelector == nil && peer.IPBlock == nil && peer.NamespaceSelector != nil &&
						len(peer.NamespaceSelector.MatchLabels) == 1 && peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "" {
						continue // the proxy port: one more namespace, named, whose pods identify themselves
					}
					if peer.PodSelector == nil || peer.NamespaceSelector != nil || peer.IPBlock != nil {
						t.Errorf("network policy %s lets in more than this namespace's pods: %+v", o.Name, peer)
						continue
					}
					if pod.proxy {
						continue // the proxy port: every pod of the namespace
					}
					// The store: only the proxy's pods.
					from, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
					if err != nil || gateway == nil || from.Empty() || !from.Matches(labels.Set(gateway.labels)) {
						t.Errorf("network policy %s lets other pods than the proxy's reach %s", o.Name, pod.name)
					}
				}
			}
		case *podMonitor:
			sel, err := metav1.LabelSelectorAsSelector(&o.Spec.Selector)
			if err != nil || gateway == nil || sel.Empty() || !sel.Matches(labels.Set(gateway.labels)) {
				t.Errorf("pod monitor %s selects no gateway pod", o.Name)
			}
			for _, ep := range o.Spec.PodMetricsEndpoints {
				if gateway == nil || containerPort(gateway.ports, ep.Port) != "15000" || ep.Path != "/metrics" {
					t.Errorf("pod monitor %s scrapes %s%s, not the admin listener's /metrics", o.Name, ep.Port, ep.Path)
				}
			}
		case *serviceMonitor:
			sel, err := metav1.LabelSelectorAsSelector(&o.Spec.Selector)
			found := false
			for _, so := range objs {
				if svc, ok := so.(*corev1.Service); ok && err == nil && !sel.Empty() && sel.Matches(labels.Set(svc.Labels)) {
					found = true
					for _, ep := range o.Spec.Endpoints {
						ok := false
						for _, p := range svc.Spec.Ports {
							ok = ok || p.Name == ep.Port && gateway != nil && containerPort(gateway.ports, p.TargetPort.String()) == "15000"
						}
						if !ok || ep.Path != "/metrics" {
							t.Errorf("service monitor %s scrapes %s%s, not the admin listener's /metrics", o.Name, ep.Port, ep.Path)
						}
					}
				}
			}
			if !found {
				t.Errorf("service monitor %s selects no service of the file", o.Name)
			}
		}
	}
	return pods
}

// podMonitor and serviceMonitor are the Prometheus Operator's kinds, as far
// as the manifests use them (monitoring.coreos.com/v1; its Go types would
// bring the operator's module).
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port string `json:"port"`
			Path string `json:"path"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port string `json:"port"`
			Path string `json:"path"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// checkPod checks the authproxy container of a pod against its config: the
// config is valid, it is where $AUTHPROXY_CONFIG says, its files are
// mounted, the probes ask the admin listener's real paths on its port, and
// the grace period outlasts the drain.
func checkPod(t *testing.T, spec corev1.PodSpec, configMaps map[string]*corev1.ConfigMap) {
	t.Helper()
	var proxy *corev1.Container
	for i, c := range spec.InitContainers {
		if c.Name == "authproxy" {
			proxy = &spec.InitContainers[i]
			if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Error("the authproxy init container is not a native sidecar (restartPolicy: Always)")
			}
		}
	}
	for i, c := range spec.Containers {
		if c.Name == "authproxy" {
			proxy = &spec.Containers[i]
		}
	}
	if proxy == nil {
		t.Fatal("no authproxy container")
	}
	// The config: $AUTHPROXY_CONFIG names a file of a mounted ConfigMap.
	var cfgPath string
	for _, e := range proxy.Env {
		if e.Name == "AUTHPROXY_CONFIG" {
			cfgPath = e.Value
		}
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	var cfgText string
	var mounts []string
	for _, m := range proxy.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Errorf("mount %s names no volume", m.Name)
			continue
		}
		if m.SubPath != "" {
			t.Errorf("mount %s uses subPath, which never sees a rotated secret", m.Name)
		}
		mounts = append(mounts, m.MountPath)
		if v.ConfigMap != nil && filepath.Dir(cfgPath) == m.MountPath {
			cm := configMaps[v.ConfigMap.Name]
			if cm == nil {
				t.Fatalf("volume %s: no ConfigMap %s in the file", v.Name, v.ConfigMap.Name)
			}
			cfgText = cm.Data[filepath.Base(cfgPath)]
		}
	}
	if cfgText == "" {
		t.Fatalf("$AUTHPROXY_CONFIG=%q is no file of a mounted ConfigMap", cfgPath)
	}
	cfg, err := config.Parse([]byte(cfgText))
	if err != nil {
		t.Fatalf("the proxy's config: %v", err)
	}
	if _, err := injectors.BuildAll(cfg, injectors.Env{SkipSecrets: true}); err != nil {
		t.Fatalf("the proxy's injectors: %v", err)
	}
	files := configFiles(cfg)
	if len(files) == 0 {
		t.Error("the config reads no file: the secrets are not mounted")
	}
	for _, f := range files {
		if !filepath.IsAbs(f) || !under(f, mounts) {
			t.Errorf("%s is not in a mounted volume (%v)", f, mounts)
		}
	}

	// The probes: over HTTP, the admin listener's port and real paths on
	// the pod's IP; or, with the admin listener on loopback (closed to
	// the cluster), the image's binary asking it from inside.
	if cfg.Admin == nil {
		t.Fatal("no admin listener for the probes")
	}
	host, port, _ := net.SplitHostPort(cfg.Admin.Address)
	probes := map[string]*corev1.Probe{"startup": proxy.StartupProbe, "readiness": proxy.ReadinessProbe, "liveness": proxy.LivenessProbe}
	want := map[string]string{"startup": "/readyz", "readiness": "/readyz", "liveness": "/healthz"}
	for kind, p := range probes {
		switch {
		case p == nil:
			t.Errorf("no %s probe", kind)
		case p.HTTPGet != nil:
			if p.HTTPGet.Path != want[kind] {
				t.Errorf("%s probe asks %s, want %s", kind, p.HTTPGet.Path, want[kind])
			}
			if !hasPort(proxy.Ports, p.HTTPGet.Port.String()) || containerPort(proxy.Ports, p.HTTPGet.Port.String()) != port {
				t.Errorf("%s probe's port %s is not the admin listener's %s", kind, p.HTTPGet.Port.String(), port)
			}
			// The kubelet probes the pod's IP: loopback would never answer.
			if host != "0.0.0.0" || !cfg.Admin.AllowRemoteClients {
				t.Errorf("admin.address %s cannot be probed by the kubelet over HTTP", cfg.Admin.Address)
			}
		case p.Exec != nil:
			wantCmd := []string{"/authproxy", "health"}
			if kind == "liveness" {
				wantCmd = append(wantCmd, "-live")
			}
			if strings.Join(p.Exec.Command, " ") != strings.Join(wantCmd, " ") {
				t.Errorf("%s probe runs %q, want %q", kind, p.Exec.Command, wantCmd)
			}
		default:
			t.Errorf("%s probe neither asks HTTP nor runs authproxy health", kind)
		}
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the pod mounts a service-account token, which the proxy never uses (automountServiceAccountToken: false)")
	}
	limited := false
	for _, e := range proxy.Env {
		if e.Name == "GOMEMLIMIT" {
			r := e.ValueFrom
			limited = r != nil && r.ResourceFieldRef != nil && r.ResourceFieldRef.Resource == "limits.memory" &&
				(r.ResourceFieldRef.ContainerName == "" || r.ResourceFieldRef.ContainerName == proxy.Name)
		}
	}
	if _, ok := proxy.Resources.Limits[corev1.ResourceMemory]; !limited || !ok {
		t.Error("GOMEMLIMIT is not the container's memory limit (env valueFrom resourceFieldRef limits.memory, with a limit set)")
	}
	drain := cfg.Timeouts.ShutdownDelay.D(0) + cfg.Timeouts.Shutdown.D(30*time.Second)
	if spec.TerminationGracePeriodSeconds == nil || time.Duration(*spec.TerminationGracePeriodSeconds)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds does not outlast shutdown_delay + shutdown (%v)", drain)
	}
	if sc := proxy.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Error("the proxy does not run as the image's nonroot user on a read-only root")
	}
}

// checkStore checks a shared token store's Deployment: one container,
// not root, a read-only root file system.
func checkStore(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	spec := d.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Errorf("deployment %s: %d containers, want the store alone", d.Name, len(spec.Containers))
		return
	}
	sc := spec.Containers[0].SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("deployment %s: the store runs as root or on a writable root", d.Name)
	}
}

// configFiles are the files a config reads, which the pod must mount: the
// CA, the injectors' secrets and issued tokens, the clients' files and the
// shared store's secrets.
func configFiles(cfg *config.Config) []string {
	var files []string
	if cfg.CA != nil {
		files = append(files, cfg.CA.CertFile, cfg.CA.KeyFile)
	}
	files = append(files, injectors.SecretFiles(cfg)...)
	files = append(files, injectors.IssuedTokenFiles(cfg)...)
	files = append(files, clientFiles(cfg)...)
	if sh := cfg.TokenCache.Shared; sh != nil {
		for _, src := range []config.SecretSource{sh.Username, sh.Password, sh.EncryptionKey} {
			if src.File != "" {
				files = append(files, src.File)
			}
		}
	}
	return files
}

// clientFiles are the files the clients' rules read: passwords, and a JWT
// client's JWKS, or the CA and token it fetches its jwks_url with.
func clientFiles(cfg *config.Config) []string {
	var out []string
	for _, cl := range cfg.Clients {
		if cl.Basic != nil && cl.Basic.Password.File != "" {
			out = append(out, cl.Basic.Password.File)
		}
		if j := cl.JWT; j != nil {
			for _, f := range []string{j.JWKSFile, j.JWKSCAFile, j.JWKSTokenFile} {
				if f != "" {
					out = append(out, f)
				}
			}
		}
	}
	return out
}

func under(path string, dirs []string) bool {
	for _, d := range dirs {
		if strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

func hasPort(ports []corev1.ContainerPort, p string) bool {
	return containerPort(ports, p) != ""
}

// containerPort is the number of a container port given by name or number.
func containerPort(ports []corev1.ContainerPort, p string) string {
	for _, cp := range ports {
		if cp.Name == p || strconv.Itoa(int(cp.ContainerPort)) == p {
			return strconv.Itoa(int(cp.ContainerPort))
		}
	}
	return ""
}

// The client pod of docs/kubernetes.md's walkthrough fits gateway.yaml:
// its projected token has the audience of a jwt client, its service
// account matches that client's subject, the NetworkPolicy admits its
// namespace on the proxy port, and the app is told where the token is.
func TestClientPodWalkthroughFitsTheGateway(t *testing.T) {
	doc, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	for _, block := range strings.Split(string(doc), "```yml\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if strings.Contains(block, "kind: Pod\n") && strings.Contains(block, "serviceAccountToken") {
			pod = &corev1.Pod{}
			if err := yaml.UnmarshalStrict([]byte(block), pod); err != nil {
				t.Fatalf("the walkthrough's pod: %v", err)
			}
		}
	}
	if pod == nil {
		t.Fatal("docs/kubernetes.md shows no client pod with a projected service-account token")
	}
	for _, file := range []string{"gateway.yaml", "gateway-shared.yaml"} {
		t.Run(file, func(t *testing.T) {
			var cfg *config.Config
			var policy *networkingv1.NetworkPolicy
			for _, o := range objects(t, file) {
				switch o := o.(type) {
				case *corev1.ConfigMap:
					if text, ok := o.Data["config.yaml"]; ok {
						if cfg, err = config.Parse([]byte(text)); err != nil {
							t.Fatal(err)
						}
					}
				case *networkingv1.NetworkPolicy:
					if o.Spec.PodSelector.MatchLabels["app"] == "authproxy-gateway" {
						policy = o
					}
				}
			}
			if cfg == nil || policy == nil {
				t.Fatal("no config or NetworkPolicy")
			}
			sa := "system:serviceaccount:" + pod.Namespace + ":" + pod.Spec.ServiceAccountName
			var client string
			var audience string
			for name, cl := range cfg.Clients {
				if j := cl.JWT; j != nil && (j.Subject == sa || strings.HasSuffix(j.Subject, "*") && strings.HasPrefix(sa, strings.TrimSuffix(j.Subject, "*"))) {
					client, audience = name, j.Audience
				}
			}
			if client == "" {
				t.Fatalf("no jwt client of the gateway takes %s", sa)
			}
			used := false
			for _, r := range cfg.Routes {
				used = used || slices.Contains(r.Clients, client)
			}
			if !used {
				t.Errorf("no route names client %s", client)
			}
			// The token: a projected volume with the client's audience,
			// whose path the app's environment names.
			var tokenPath string
			for _, v := range pod.Spec.Volumes {
				if v.Projected == nil {
					continue
				}
				for _, src := range v.Projected.Sources {
					if st := src.ServiceAccountToken; st != nil && st.Audience == audience {
						for _, m := range pod.Spec.Containers[0].VolumeMounts {
							if m.Name == v.Name {
								tokenPath = m.MountPath + "/" + st.Path
							}
						}
					}
				}
			}
			if tokenPath == "" {
				t.Fatalf("the pod mounts no service-account token with audience %q", audience)
			}
			named := false
			for _, e := range pod.Spec.Containers[0].Env {
				named = named || e.Value == tokenPath
			}
			if !named {
				t.Errorf("the app's environment does not name the token's path %s", tokenPath)
			}
			admitted := false
			for _, rule := range policy.Spec.Ingress {
				for _, p := range rule.Ports {
					if p.Port == nil || p.Port.IntValue() != 3128 {
						continue
					}
					for _, peer := range rule.From {
						admitted = admitted || peer.NamespaceSelector != nil && peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == pod.Namespace
					}
				}
			}
			if !admitted {
				t.Errorf("the NetworkPolicy does not let namespace %s reach the proxy port", pod.Namespace)
			}
		})
	}
}
