// Package deploy holds no code: its tests check the deployment files (the
// Kubernetes manifests, compose.yaml, the Dockerfile and nginx.conf) against
// what the binary serves and reads, since there is no cluster or Docker
// daemon to try them on.
package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/parley-dev/parley/internal/config"
	"github.com/parley-dev/parley/internal/token"
)

const k8sDir = "k8s"

// PostgreSQL's defaults, against which the pool size is checked.
const (
	pgMaxConnections      = 100
	pgSuperuserReserved   = 3
	pgHeadroomConnections = 5 // psql, monitoring, `parley migrate`, `parley agent-key create`
)

// goRuntimeVars are read by the Go runtime rather than by config.Load; the
// manifests may set these and nothing else outside config.Vars().
var goRuntimeVars = map[string]bool{"GOMEMLIMIT": true, "GOGC": true}

// kustomization is the part of kustomize's Kustomization that the manifests
// use; decoding it strictly makes any other field a test failure, so a new
// field is a deliberate change to this struct.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

// manifests is every object the kustomization applies, decoded.
type manifests struct {
	kustomization   kustomization
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	serviceAccounts map[string]*corev1.ServiceAccount
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	pdbs            []*policyv1.PodDisruptionBudget
}

// loadManifests decodes deploy/k8s strictly: an unknown or misspelt field,
// a duplicate key, a wrong type or an unparsable quantity fails, as it
// would in `kubectl apply --dry-run=client -k deploy/k8s`.
func loadManifests(t *testing.T) *manifests {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := &manifests{
		configMaps:      map[string]*corev1.ConfigMap{},
		secrets:         map[string]*corev1.Secret{},
		serviceAccounts: map[string]*corev1.ServiceAccount{},
	}
	if err := yaml.UnmarshalStrict(raw, &m.kustomization); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if m.kustomization.APIVersion != "kustomize.config.k8s.io/v1beta1" || m.kustomization.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: apiVersion %q kind %q", m.kustomization.APIVersion, m.kustomization.Kind)
	}

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, autoscalingv2.AddToScheme, policyv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	decoder := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true})

	seen := map[string]string{}
	for _, file := range m.kustomization.Resources {
		docs, err := splitYAML(filepath.Join(k8sDir, file))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for i, doc := range docs {
			obj, gvk, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s, document %d: %v", file, i+1, err)
			}
			meta, ok := obj.(metav1.Object)
			if !ok {
				t.Fatalf("%s, document %d: %s has no metadata", file, i+1, gvk)
			}
			checkMeta(t, file, gvk.Kind, meta)
			key := gvk.Kind + "/" + meta.GetName()
			if prev, dup := seen[key]; dup {
				t.Errorf("%s: %s is also defined in %s", file, key, prev)
			}
			seen[key] = file
			switch o := obj.(type) {
			case *appsv1.Deployment:
				m.deployments = append(m.deployments, o)
			case *corev1.Service:
				m.services = append(m.services, o)
			case *corev1.ConfigMap:
				m.configMaps[o.Name] = o
			case *corev1.Secret:
				m.secrets[o.Name] = o
			case *corev1.ServiceAccount:
				m.serviceAccounts[o.Name] = o
			case *autoscalingv2.HorizontalPodAutoscaler:
				m.hpas = append(m.hpas, o)
			case *policyv1.PodDisruptionBudget:
				m.pdbs = append(m.pdbs, o)
			default:
				t.Fatalf("%s: unexpected kind %s", file, gvk)
			}
		}
	}
	if len(m.deployments) != 1 || len(m.services) != 1 || len(m.hpas) != 1 || len(m.pdbs) != 1 {
		t.Fatalf("want one Deployment, Service, HPA and PDB; got %d, %d, %d, %d",
			len(m.deployments), len(m.services), len(m.hpas), len(m.pdbs))
	}
	return m
}

// splitYAML returns the non-empty documents of a multi-document YAML file.
func splitYAML(name string) ([][]byte, error) {
	raw, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return docs, nil
			}
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
}

func stripComments(doc []byte) []byte {
	var out []byte
	for line := range bytes.Lines(doc) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

// checkMeta applies the API server's rules for names and labels, which
// strict decoding does not.
func checkMeta(t *testing.T, file, kind string, meta metav1.Object) {
	t.Helper()
	if meta.GetNamespace() != "" {
		t.Errorf("%s: %s %s sets a namespace; the kustomization leaves that to the user", file, kind, meta.GetName())
	}
	for _, msg := range validation.IsDNS1123Subdomain(meta.GetName()) {
		t.Errorf("%s: %s name %q: %s", file, kind, meta.GetName(), msg)
	}
	checkLabels(t, file+": "+kind+" "+meta.GetName(), meta.GetLabels())
}

func checkLabels(t *testing.T, where string, l map[string]string) {
	t.Helper()
	for k, v := range l {
		for _, msg := range validation.IsQualifiedName(k) {
			t.Errorf("%s: label key %q: %s", where, k, msg)
		}
		for _, msg := range validation.IsValidLabelValue(v) {
			t.Errorf("%s: label %s value %q: %s", where, k, v, msg)
		}
	}
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	entries, err := os.ReadDir(k8sDir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		ext := path.Ext(e.Name())
		if !e.IsDir() && (ext == ".yaml" || ext == ".yml") && e.Name() != "kustomization.yaml" {
			files = append(files, e.Name())
		}
	}
	listed := slices.Clone(m.kustomization.Resources)
	slices.Sort(files)
	slices.Sort(listed)
	if !slices.Equal(files, listed) {
		t.Errorf("kustomization resources %v, files in %s %v", listed, k8sDir, files)
	}

	images := map[string]bool{}
	for _, c := range m.deployments[0].Spec.Template.Spec.Containers {
		images[c.Image] = true
	}
	for _, img := range m.kustomization.Images {
		if !images[img.Name] {
			t.Errorf("kustomization images: %q matches no container image (have %v)", img.Name, images)
		}
	}
}

// container returns the Deployment's parley container.
func (m *manifests) container(t *testing.T) *corev1.Container {
	t.Helper()
	cs := m.deployments[0].Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("want one container, got %d", len(cs))
	}
	return &cs[0]
}

// environment resolves the container's environment the way the kubelet
// would, from the ConfigMaps and Secrets in the kustomization. It fails the
// test on a reference to a ConfigMap, Secret or key that is not there.
func (m *manifests) environment(t *testing.T, c *corev1.Container) map[string]string {
	env, _ := m.environmentSources(t, c)
	return env
}

// environmentSources is environment plus, for each variable, where its
// value comes from ("ConfigMap NAME", "Secret NAME" or "env").
func (m *manifests) environmentSources(t *testing.T, c *corev1.Container) (env, from map[string]string) {
	t.Helper()
	env, from = map[string]string{}, map[string]string{}
	set := func(name, value, source string) {
		if prev, dup := from[name]; dup {
			t.Errorf("env %s is set twice (%s and %s); the later silently wins", name, prev, source)
		}
		env[name], from[name] = value, source
	}
	for _, ef := range c.EnvFrom {
		if ef.Prefix != "" {
			t.Errorf("envFrom prefix %q: the binary reads unprefixed names", ef.Prefix)
		}
		switch {
		case ef.ConfigMapRef != nil:
			cm, ok := m.configMaps[ef.ConfigMapRef.Name]
			if !ok {
				t.Fatalf("envFrom: ConfigMap %q is not in the kustomization", ef.ConfigMapRef.Name)
			}
			for k, v := range cm.Data {
				set(k, v, "ConfigMap "+cm.Name)
			}
		case ef.SecretRef != nil:
			s, ok := m.secrets[ef.SecretRef.Name]
			if !ok {
				t.Fatalf("envFrom: Secret %q is not in the kustomization", ef.SecretRef.Name)
			}
			for k, v := range secretData(s) {
				set(k, v, "Secret "+s.Name)
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, e.Value, "env")
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, ok := m.secrets[ref.Name]
			if !ok {
				t.Fatalf("env %s: Secret %q is not in the kustomization", e.Name, ref.Name)
			}
			v, ok := secretData(s)[ref.Key]
			if !ok {
				t.Fatalf("env %s: Secret %q has no key %q", e.Name, ref.Name, ref.Key)
			}
			if ref.Optional != nil && *ref.Optional {
				t.Errorf("env %s: optional secret refs hide a missing secret until the value is needed", e.Name)
			}
			set(e.Name, v, "Secret "+ref.Name)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, ok := m.configMaps[ref.Name]
			if !ok {
				t.Fatalf("env %s: ConfigMap %q is not in the kustomization", e.Name, ref.Name)
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				t.Fatalf("env %s: ConfigMap %q has no key %q", e.Name, ref.Name, ref.Key)
			}
			set(e.Name, v, "ConfigMap "+ref.Name)
		default:
			t.Errorf("env %s: only ConfigMap and Secret references are expected", e.Name)
		}
	}
	for name := range env {
		for _, msg := range validation.IsEnvVarName(name) {
			t.Errorf("env %q: %s", name, msg)
		}
	}
	return env, from
}

func secretData(s *corev1.Secret) map[string]string {
	out := map[string]string{}
	for k, v := range s.Data {
		out[k] = string(v)
	}
	// stringData wins over data, as in the API server.
	for k, v := range s.StringData {
		out[k] = v
	}
	return out
}

// loadConfig runs the binary's own configuration loader over the
// manifests' environment: whatever it rejects, the pods would exit on.
func loadConfig(t *testing.T, env map[string]string) config.Config {
	t.Helper()
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("the binary would refuse this environment: %v", err)
	}
	return cfg
}

func TestEnvironmentMatchesConfig(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	c := m.container(t)
	env, from := m.environmentSources(t, c)

	known := map[string]config.Var{}
	for _, v := range config.Vars() {
		known[v.Name] = v
	}
	for name := range env {
		if _, ok := known[name]; !ok && !goRuntimeVars[name] {
			t.Errorf("env %s is set but the binary never reads it (not in config.Vars)", name)
		}
	}
	for _, v := range config.Vars() {
		if v.Required && strings.TrimSpace(env[v.Name]) == "" {
			t.Errorf("required %s is not provided", v.Name)
		}
	}
	cfg := loadConfig(t, env)

	// Secrets stay in Secrets: a credential in the ConfigMap would be
	// readable by anyone allowed to read ConfigMaps.
	for _, name := range []string{"DATABASE_URL", "AZURE_STORAGE_CONNECTION_STRING", "LIVEKIT_API_SECRET"} {
		if !strings.HasPrefix(from[name], "Secret ") {
			t.Errorf("%s comes from %s; it must come from a Secret", name, from[name])
		}
	}

	// The root filesystem is read-only: blobs must go to Azure, not to the
	// directory store.
	if cfg.AzureConnectionString == "" {
		t.Error("AZURE_STORAGE_CONNECTION_STRING is empty: the directory blob store cannot write to a read-only root filesystem")
	}

	t.Run("JWK set mounted from a Secret", func(t *testing.T) {
		checkJWTKeysMount(t, m, c, cfg.JWTKeysPath)
	})

	t.Run("GOMEMLIMIT below the memory limit", func(t *testing.T) {
		raw, ok := env["GOMEMLIMIT"]
		if !ok {
			return
		}
		soft, err := parseGoMemLimit(raw)
		if err != nil {
			t.Fatalf("GOMEMLIMIT %q: %v", raw, err)
		}
		limit := c.Resources.Limits.Memory()
		if limit.IsZero() {
			t.Fatal("GOMEMLIMIT set without a memory limit")
		}
		if soft >= limit.Value() {
			t.Errorf("GOMEMLIMIT %s (%d bytes) must stay below limits.memory %s", raw, soft, limit)
		}
	})
}

// checkJWTKeysMount follows PARLEY_JWT_KEYS to a read-only mount of a Secret
// volume that holds the file, and checks the placeholder is refused by the
// binary's own parser (so a forgotten replacement cannot serve).
func checkJWTKeysMount(t *testing.T, m *manifests, c *corev1.Container, keysPath string) {
	t.Helper()
	dir, file := path.Split(keysPath)
	dir = strings.TrimSuffix(dir, "/")
	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dir {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Fatalf("PARLEY_JWT_KEYS=%s: no volume mounted at %s", keysPath, dir)
	}
	if !mount.ReadOnly {
		t.Errorf("the JWK set mount at %s must be read-only", dir)
	}
	var vol *corev1.Volume
	for i, v := range m.deployments[0].Spec.Template.Spec.Volumes {
		if v.Name == mount.Name {
			vol = &m.deployments[0].Spec.Template.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Secret == nil {
		t.Fatalf("volume %q at %s is not a Secret volume", mount.Name, dir)
	}
	secret, ok := m.secrets[vol.Secret.SecretName]
	if !ok {
		t.Fatalf("Secret %q is not in the kustomization", vol.Secret.SecretName)
	}
	key := file
	if len(vol.Secret.Items) > 0 {
		key = ""
		for _, it := range vol.Secret.Items {
			if it.Path == file {
				key = it.Key
			}
		}
		if key == "" {
			t.Fatalf("Secret volume %q projects no item to %s", vol.Name, file)
		}
	}
	placeholder, ok := secretData(secret)[key]
	if !ok {
		t.Fatalf("Secret %q has no key %q for %s", secret.Name, key, keysPath)
	}
	if mode := vol.Secret.DefaultMode; mode != nil && *mode&0o007 != 0 {
		t.Errorf("JWK set file mode %#o is readable by others", *mode)
	}
	if _, err := token.ParseKeySet([]byte(placeholder)); err == nil {
		t.Error("the placeholder JWK set parses; it must be refused so a forgotten replacement cannot serve")
	}
}

// parseGoMemLimit parses the Go runtime's GOMEMLIMIT syntax.
func parseGoMemLimit(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * u.mult, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// httpPort is the port the binary listens on, from PARLEY_HTTP_ADDR.
func httpPort(t *testing.T, cfg config.Config) int32 {
	t.Helper()
	return addrPort(t, "PARLEY_HTTP_ADDR", cfg.HTTPAddr)
}

// addrPort is the port of the listen address in variable name.
func addrPort(t *testing.T, name, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s %q: %v", name, addr, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		t.Fatalf("%s %q: port %q", name, addr, p)
	}
	return int32(n)
}

// resolvePort turns a probe's or Service's target port into a container
// port number, failing on a name no container port has.
func resolvePort(t *testing.T, c *corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Fatalf("port %q names no container port", p.StrVal)
	return 0
}

func TestProbesAndPorts(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	c := m.container(t)
	cfg := loadConfig(t, m.environment(t, c))
	port := httpPort(t, cfg)

	want := []int32{port}
	if cfg.OpsAddr != "" {
		want = append(want, addrPort(t, "PARLEY_OPS_ADDR", cfg.OpsAddr))
	}
	var got []int32
	for _, cp := range c.Ports {
		got = append(got, cp.ContainerPort)
	}
	if !slices.Equal(got, want) {
		t.Errorf("container ports %+v, want exactly PARLEY_HTTP_ADDR's and PARLEY_OPS_ADDR's %v", c.Ports, want)
	}
	for _, cp := range c.Ports {
		for _, msg := range validation.IsValidPortName(cp.Name) {
			t.Errorf("container port name %q: %s", cp.Name, msg)
		}
	}

	probes := []struct {
		name  string
		probe *corev1.Probe
		paths []string
	}{
		{"readinessProbe", c.ReadinessProbe, []string{"/readyz"}},
		// Liveness must not depend on PostgreSQL or Valkey: /healthz only.
		{"livenessProbe", c.LivenessProbe, []string{"/healthz"}},
		{"startupProbe", c.StartupProbe, []string{"/healthz", "/readyz"}},
	}
	for _, p := range probes {
		if p.probe == nil {
			if p.name == "startupProbe" {
				continue
			}
			t.Errorf("%s missing", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g == nil {
			t.Errorf("%s: want an httpGet probe (the image has no shell for exec)", p.name)
			continue
		}
		if !slices.Contains(p.paths, g.Path) {
			t.Errorf("%s: path %q, want one of %v", p.name, g.Path, p.paths)
		}
		if got := resolvePort(t, c, g.Port); got != port {
			t.Errorf("%s: port %d, but the binary listens on %d", p.name, got, port)
		}
		if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
			t.Errorf("%s: scheme %s; the binary serves plain HTTP", p.name, g.Scheme)
		}
		// readyz checks dependencies with a one-second budget.
		if p.probe.TimeoutSeconds < 2 {
			t.Errorf("%s: timeoutSeconds %d leaves no slack (/readyz spends up to 1s checking dependencies)", p.name, p.probe.TimeoutSeconds)
		}
	}

	svc := m.services[0]
	if svc.Spec.Type != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("Service type %s, want ClusterIP", svc.Spec.Type)
	}
	if svc.Spec.SessionAffinity != "" && svc.Spec.SessionAffinity != corev1.ServiceAffinityNone {
		t.Errorf("Service sessionAffinity %s: replicas are interchangeable, want None", svc.Spec.SessionAffinity)
	}
	podLabels := labels.Set(m.deployments[0].Spec.Template.Labels)
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("Service selector %v does not match the pod labels %v", svc.Spec.Selector, podLabels)
	}
	if len(svc.Spec.Ports) == 0 {
		t.Fatal("Service has no ports")
	}
	for _, sp := range svc.Spec.Ports {
		for _, msg := range validation.IsValidPortName(sp.Name) {
			t.Errorf("Service port name %q: %s", sp.Name, msg)
		}
		if got := resolvePort(t, c, sp.TargetPort); got != port {
			t.Errorf("Service port %s targets %d, but the binary listens on %d", sp.Name, got, port)
		}
		if sp.AppProtocol == nil || *sp.AppProtocol != "kubernetes.io/h2c" {
			t.Errorf("Service port %s: appProtocol must be kubernetes.io/h2c so proxies speak HTTP/2 (gRPC) to the pods", sp.Name)
		}
	}
}

// TestMetricsOnTheOpsPort: /metrics (and pprof) are served on
// PARLEY_OPS_ADDR, a container port Prometheus scrapes pod by pod and that
// no Service exposes, so nothing outside the cluster reads them.
func TestMetricsOnTheOpsPort(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	c := m.container(t)
	cfg := loadConfig(t, m.environment(t, c))
	if cfg.OpsAddr == "" {
		t.Fatal("PARLEY_OPS_ADDR is not set: /metrics would be served on the public port")
	}
	host, _, _ := net.SplitHostPort(cfg.OpsAddr)
	if host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("PARLEY_OPS_ADDR %q listens on %s only; Prometheus scrapes from another pod", cfg.OpsAddr, host)
	}
	ops := addrPort(t, "PARLEY_OPS_ADDR", cfg.OpsAddr)
	if ops == httpPort(t, cfg) {
		t.Fatalf("PARLEY_OPS_ADDR and PARLEY_HTTP_ADDR share port %d", ops)
	}
	if got := resolvePort(t, c, intstr.FromString("ops")); got != ops {
		t.Errorf("container port ops is %d, PARLEY_OPS_ADDR's %d", got, ops)
	}

	a := m.deployments[0].Spec.Template.Annotations
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != strconv.Itoa(int(ops)) || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v: want prometheus.io/scrape true, port %d, path /metrics", a, ops)
	}
	for _, sp := range m.services[0].Spec.Ports {
		if resolvePort(t, c, sp.TargetPort) == ops || sp.Port == ops {
			t.Errorf("Service port %s exposes the ops port %d", sp.Name, ops)
		}
	}
	for name, p := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe, "startupProbe": c.StartupProbe} {
		if p != nil && p.HTTPGet != nil && resolvePort(t, c, p.HTTPGet.Port) == ops {
			t.Errorf("%s on the ops port, which serves no probes", name)
		}
	}
}

func TestDeploymentRollout(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	d := m.deployments[0]
	spec := d.Spec

	if spec.Replicas == nil || *spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", spec.Replicas)
	}
	if spec.Selector == nil {
		t.Fatal("Deployment has no selector")
	}
	sel, err := metav1.LabelSelectorAsSelector(spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(spec.Template.Labels)) {
		t.Errorf("selector %v does not match the template labels %v (the API server refuses that)", spec.Selector, spec.Template.Labels)
	}
	checkLabels(t, "pod template", spec.Template.Labels)

	if spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || spec.Strategy.RollingUpdate == nil {
		t.Fatalf("strategy %+v, want RollingUpdate", spec.Strategy)
	}
	ru := spec.Strategy.RollingUpdate
	if mu := ru.MaxUnavailable; mu == nil || (mu.String() != "0" && mu.String() != "0%") {
		t.Errorf("maxUnavailable %v, want 0", ru.MaxUnavailable)
	}
	if ru.MaxSurge == nil || ru.MaxSurge.String() != "1" {
		t.Errorf("maxSurge %v, want 1", ru.MaxSurge)
	}

	t.Run("termination grace covers preStop, shutdown delay and drain", func(t *testing.T) {
		c := m.container(t)
		cfg := loadConfig(t, m.environment(t, c))
		var preStop time.Duration
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
			h := c.Lifecycle.PreStop
			if h.Exec != nil {
				t.Error("preStop exec: the distroless image has no shell or sleep binary")
			}
			if h.Sleep != nil {
				preStop = time.Duration(h.Sleep.Seconds) * time.Second
			}
		}
		need := preStop + cfg.ShutdownDelay + cfg.DrainTimeout
		grace := spec.Template.Spec.TerminationGracePeriodSeconds
		if grace == nil {
			t.Fatalf("terminationGracePeriodSeconds unset (default 30s); need more than %v", need)
		}
		if got := time.Duration(*grace) * time.Second; got <= need {
			t.Errorf("terminationGracePeriodSeconds %v must exceed preStop %v + PARLEY_SHUTDOWN_DELAY %v + PARLEY_DRAIN_TIMEOUT %v = %v",
				got, preStop, cfg.ShutdownDelay, cfg.DrainTimeout, need)
		}
	})

	t.Run("resources", func(t *testing.T) {
		r := m.container(t).Resources
		for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := r.Requests[name]
			lim, hasLim := r.Limits[name]
			if !hasReq || !hasLim {
				t.Errorf("%s: want both a request and a limit", name)
				continue
			}
			if req.Cmp(lim) > 0 {
				t.Errorf("%s: request %s above limit %s", name, req.String(), lim.String())
			}
		}
	})
}

func TestSecurityContext(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	pod := m.deployments[0].Spec.Template.Spec
	c := m.container(t)

	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("pod automountServiceAccountToken must be false")
	}
	sa, ok := m.serviceAccounts[pod.ServiceAccountName]
	if !ok {
		t.Fatalf("serviceAccountName %q is not in the kustomization", pod.ServiceAccountName)
	}
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("ServiceAccount automountServiceAccountToken must be false")
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Error("pod shares a host namespace")
	}

	psc := pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("container has no securityContext")
	}
	// The container's settings override the pod's, as in the kubelet.
	runAsNonRoot := firstBool(sc.RunAsNonRoot, psc.RunAsNonRoot)
	runAsUser := firstInt(sc.RunAsUser, psc.RunAsUser)
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}

	if runAsNonRoot == nil || !*runAsNonRoot {
		t.Error("runAsNonRoot must be true")
	}
	// The image's USER is a name in some builds; the kubelet can only
	// verify runAsNonRoot against a numeric uid.
	if runAsUser == nil || *runAsUser == 0 {
		t.Errorf("runAsUser %v: want a non-zero uid", runAsUser)
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile %+v, want RuntimeDefault", seccomp)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged container")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities %+v, want drop [ALL] and nothing added", sc.Capabilities)
	}
}

func firstBool(vs ...*bool) *bool {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}

func firstInt(vs ...*int64) *int64 {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}

func TestAutoscalingAndDisruption(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	d := m.deployments[0]
	hpa := m.hpas[0]

	ref := hpa.Spec.ScaleTargetRef
	if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != d.Name {
		t.Errorf("HPA scaleTargetRef %+v, want apps/v1 Deployment %s", ref, d.Name)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != 2 || hpa.Spec.MaxReplicas != 20 {
		t.Errorf("HPA %v..%d, want 2..20", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
	}
	var cpu bool
	for _, mt := range hpa.Spec.Metrics {
		if mt.Type == autoscalingv2.ResourceMetricSourceType && mt.Resource != nil && mt.Resource.Name == corev1.ResourceCPU {
			cpu = mt.Resource.Target.Type == autoscalingv2.UtilizationMetricType && mt.Resource.Target.AverageUtilization != nil
		}
	}
	if !cpu {
		t.Error("HPA must scale on CPU utilization")
	}
	// Utilization is measured against requests; without one the HPA does nothing.
	if _, ok := m.container(t).Resources.Requests[corev1.ResourceCPU]; !ok {
		t.Error("CPU utilization needs a CPU request")
	}

	pdb := m.pdbs[0]
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("PDB selector %v does not match the pods", pdb.Spec.Selector)
	}
	switch {
	case pdb.Spec.MinAvailable != nil && pdb.Spec.MaxUnavailable != nil:
		t.Error("PDB sets both minAvailable and maxUnavailable")
	case pdb.Spec.MinAvailable != nil:
		// minAvailable at the HPA minimum would block every node drain.
		if n := pdb.Spec.MinAvailable; n.Type != intstr.Int || n.IntVal < 1 || n.IntVal >= *hpa.Spec.MinReplicas {
			t.Errorf("PDB minAvailable %s, want 1..%d", n.String(), *hpa.Spec.MinReplicas-1)
		}
	case pdb.Spec.MaxUnavailable != nil:
		if n := pdb.Spec.MaxUnavailable; n.Type != intstr.Int || n.IntVal != 1 {
			t.Errorf("PDB maxUnavailable %s, want 1", n.String())
		}
	default:
		t.Error("PDB sets neither minAvailable nor maxUnavailable")
	}
}

// TestPoolFitsPostgres recomputes deploy/k8s/README.md's table: every pod
// that can hold connections at once, times the pool, must fit PostgreSQL's
// default max_connections with headroom.
func TestPoolFitsPostgres(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	cfg := loadConfig(t, m.environment(t, m.container(t)))
	surge, err := intstr.GetScaledValueFromIntOrPercent(m.deployments[0].Spec.Strategy.RollingUpdate.MaxSurge, int(m.hpas[0].Spec.MaxReplicas), true)
	if err != nil {
		t.Fatal(err)
	}
	// One more pod can still be draining (holding its pool) while its
	// replacement and the surge pod are up.
	pods := int(m.hpas[0].Spec.MaxReplicas) + surge + 1
	budget := pgMaxConnections - pgSuperuserReserved - pgHeadroomConnections
	if used := pods * cfg.DBMaxOpenConns; used > budget {
		t.Errorf("%d pods x PARLEY_DB_MAX_OPEN_CONNS %d = %d connections; PostgreSQL's default %d - %d reserved - %d headroom leaves %d",
			pods, cfg.DBMaxOpenConns, used, pgMaxConnections, pgSuperuserReserved, pgHeadroomConnections, budget)
	}
	if cfg.DBMaxIdleConns > cfg.DBMaxOpenConns {
		t.Errorf("PARLEY_DB_MAX_IDLE_CONNS %d above PARLEY_DB_MAX_OPEN_CONNS %d", cfg.DBMaxIdleConns, cfg.DBMaxOpenConns)
	}
	readme, err := os.ReadFile(filepath.Join(k8sDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf("| %d |", pods),
		fmt.Sprintf("| × %d |", cfg.DBMaxOpenConns),
		fmt.Sprintf("| %d |", pods*cfg.DBMaxOpenConns),
	} {
		if !bytes.Contains(readme, []byte(want)) {
			t.Errorf("deploy/k8s/README.md's pool table is stale: no %q", want)
		}
	}
}

// TestValkeyEvictionPolicyDocumented: the manifests run no Valkey (the
// Compose file's is checked in TestComposeServices), so the README is where
// operators learn that theirs must not evict (see internal/valkeyconfig).
func TestValkeyEvictionPolicyDocumented(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join(k8sDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"maxmemory-policy noeviction", "`--maxmemory-policy noeviction`"} {
		if !bytes.Contains(readme, []byte(want)) {
			t.Errorf("deploy/k8s/README.md does not say %q", want)
		}
	}
}
