package kubernetes

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/proctest"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// chartValueSets are the value sets the chart is rendered with: its
// defaults, everything switched on, and the optional parts off.
var chartValueSets = []struct {
	name string
	args []string
}{
	{"defaults", nil},
	{"shared-monitored", []string{"--set", "sharedStore.enabled=true", "--set", "podMonitor.enabled=true", "--set", "serviceMonitor.enabled=true", "--set", "replicas=3"}},
	{"bare", []string{"--set", "networkPolicy.enabled=false", "--set", "podDisruptionBudget.enabled=false", "--set-json", "podAnnotations={}"}},
	// The reports namespace's pods, by their service-account tokens,
	// checked against the cluster's keys (docs/kubernetes.md).
	{"cluster-tokens", []string{"--set", "clusterJWKS.enabled=true", "--set", "networkPolicy.clientNamespaces={reports}",
		"--set-json", `config.clients.reports={"jwt":{"jwks_url":"https://kubernetes.default.svc/openid/v1/jwks","jwks_ca_file":"/var/run/secrets/authproxy/kube/ca.crt","jwks_token_file":"/var/run/secrets/authproxy/kube/token","issuer":"https://kubernetes.default.svc.cluster.local","audience":"authproxy","subject":"system:serviceaccount:reports:*"}}`,
		"--set-json", `config.routes=[{"name":"api","match":{"host":"api.example.com"},"injector":"api-token","clients":["apps","reports"]},{"name":"fleet","match":{"host":"fleet.example.com"},"injector":"fleet","clients":["reports"]}]`,
		// and an issuer that trusts the cluster's tokens: no client secret.
		"--set-json", `issuerTokens=[{"path":"idp","audience":"https://idp.example.com"}]`,
		"--set-json", `config.injectors.fleet={"kind":"oauth2","token_url":"https://idp.example.com/oauth/v2/token","client_assertion":{"file":"/var/run/secrets/tokens/idp"},"scopes":["fleet"]}`}},
}

// renderChart renders deploy/helm/authproxy with helm template and writes
// the result to a file of its own.
func renderChart(t *testing.T, args []string) (file string, rendered []byte) {
	t.Helper()
	cmd := exec.Command(proctest.Tool(t, "helm"), append([]string{"template", "gw", "../helm/authproxy", "--namespace", "egress"}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr.String())
	}
	file = filepath.Join(t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return file, out
}

// The Helm chart, rendered with each value set by Helm itself: its objects
// are valid for Kubernetes 1.29 and 1.30 as kubectl-validate (offline)
// says, they pass every check the plain manifests pass, and the rendered
// gateway starts as the kubelet would start it.
func TestHelmChart(t *testing.T) {
	validate := proctest.Tool(t, "kubectl-validate")
	binary := buildProxy(t)
	for _, vs := range chartValueSets {
		t.Run(vs.name, func(t *testing.T) {
			file, rendered := renderChart(t, vs.args)
			// kubectl-validate knows the built-in kinds; the Prometheus
			// Operator's are checked by checkManifest alone.
			var native []string
			for _, doc := range strings.Split(string(rendered), "\n---\n") {
				if !strings.Contains(doc, "apiVersion: monitoring.coreos.com/") {
					native = append(native, doc)
				}
			}
			nativeFile := filepath.Join(t.TempDir(), "native.yaml")
			os.WriteFile(nativeFile, []byte(strings.Join(native, "\n---\n")), 0o644)
			for _, version := range []string{"1.29", "1.30"} {
				out, err := exec.Command(validate, "--version", version, nativeFile).CombinedOutput()
				if err != nil {
					t.Errorf("kubectl-validate --version %s: %v\n%s", version, err, out)
				}
			}
			if pods := checkManifest(t, file); pods != 1 {
				t.Errorf("%d proxy pod specs, want the gateway's", pods)
			}
			for _, pod := range proxyPods(t, file) {
				startPod(t, binary, pod)
			}
		})
	}
}

// docs/kubernetes.md's sidecar snippet for an application's own chart is
// sidecar.yaml's proxy container and volumes (but for the image).
func TestSidecarSnippetIsTheManifest(t *testing.T) {
	doc, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	i := strings.Index(text, "### The sidecar, in your own chart")
	if i < 0 {
		t.Fatal("docs/kubernetes.md has no sidecar snippet")
	}
	start := strings.Index(text[i:], "```yml\n") + i + len("```yml\n")
	end := strings.Index(text[start:], "```") + start
	var snippet struct {
		Spec corev1.PodSpec `json:"spec"`
	}
	if err := yaml.UnmarshalStrict([]byte(text[start:end]), &snippet); err != nil {
		t.Fatalf("the snippet: %v", err)
	}
	var manifest corev1.PodSpec
	for _, o := range objects(t, "sidecar.yaml") {
		if p, ok := o.(*corev1.Pod); ok {
			manifest = p.Spec
		}
	}
	got, want := snippet.Spec.InitContainers[0], manifest.InitContainers[0]
	got.Image, got.ImagePullPolicy, want.Image, want.ImagePullPolicy = "", "", "", ""
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("the snippet's container differs from sidecar.yaml's (-manifest +snippet):\n%s", d)
	}
	if d := cmp.Diff(manifest.Volumes, snippet.Spec.Volumes); d != "" {
		t.Errorf("the snippet's volumes differ from sidecar.yaml's:\n%s", d)
	}
	if d := cmp.Diff(manifest.SecurityContext, snippet.Spec.SecurityContext); d != "" || *snippet.Spec.AutomountServiceAccountToken {
		t.Errorf("the snippet's pod security differs from sidecar.yaml's:\n%s", d)
	}
}
