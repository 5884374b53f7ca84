package deploy

import (
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"

	"github.com/parley-dev/parley/internal/config"
)

// replicaServices are the Parley replicas nginx balances over.
var replicaServices = []string{"parley-1", "parley-2"}

// loadCompose parses compose.yaml with the Compose specification's own
// loader: schema validation, YAML merge keys and interpolation included,
// with an empty environment so nothing on this machine leaks in.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(t.Context(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "compose.yaml")}},
		Environment: types.Mapping{},
	})
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("compose.yaml has no service %q", name)
	}
	return s
}

// serviceEnv is a service's environment; a variable without a value would
// be taken from the host at `docker compose up`, so it is an error here.
func serviceEnv(t *testing.T, s types.ServiceConfig) map[string]string {
	t.Helper()
	env := map[string]string{}
	for k, v := range s.Environment {
		if v == nil {
			t.Errorf("%s: %s has no value and would come from the host environment", s.Name, k)
			continue
		}
		env[k] = *v
	}
	return env
}

func TestComposeServices(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	for _, name := range append([]string{"postgres", "valkey", "azurite", "livekit", "nginx"}, replicaServices...) {
		service(t, p, name)
	}

	lk := service(t, p, "livekit")
	if !strings.HasPrefix(lk.Image, "livekit/livekit-server") {
		t.Errorf("livekit image %q, want livekit/livekit-server", lk.Image)
	}
	if !slices.Contains(lk.Command, "--dev") {
		t.Errorf("livekit command %v lacks --dev", lk.Command)
	}
	// LiveKit binds 127.0.0.1 unless told otherwise: the replicas in other
	// containers could not reach it.
	if i := slices.Index(lk.Command, "--bind"); i < 0 || i+1 >= len(lk.Command) || lk.Command[i+1] != "0.0.0.0" {
		t.Errorf("livekit command %v lacks --bind 0.0.0.0", lk.Command)
	}

	// Any other policy may evict revoked-token keys (see
	// internal/valkeyconfig); Valkey's default is noeviction, but the file
	// says so rather than rely on an image's default.
	vk := service(t, p, "valkey")
	if i := slices.Index(vk.Command, "--maxmemory-policy"); i < 0 || i+1 >= len(vk.Command) || vk.Command[i+1] != "noeviction" {
		t.Errorf("valkey command %v lacks --maxmemory-policy noeviction", vk.Command)
	}

	for _, name := range []string{"postgres", "valkey"} {
		if hc := service(t, p, name).HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 {
			t.Errorf("%s has no health check for service_healthy to wait on", name)
		}
	}
}

func TestComposeReplicas(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	dockerfileEnv := finalStage(t, parseDockerfile(t)).env

	known := map[string]bool{}
	for _, v := range config.Vars() {
		known[v.Name] = true
	}
	var first map[string]string
	for _, name := range replicaServices {
		s := service(t, p, name)
		env := serviceEnv(t, s)
		for k := range env {
			if !known[k] {
				t.Errorf("%s: %s is set but the binary never reads it (not in config.Vars)", name, k)
			}
		}
		// What the process sees: the image's ENV, then compose's.
		full := map[string]string{}
		for k, v := range dockerfileEnv {
			full[k] = v
		}
		for k, v := range env {
			full[k] = v
		}
		for _, v := range config.Vars() {
			if v.Required && full[v.Name] == "" {
				t.Errorf("%s: required %s is not provided", name, v.Name)
			}
		}
		if _, err := config.Load(func(k string) string { return full[k] }); err != nil {
			t.Errorf("%s: the binary would refuse this environment: %v", name, err)
		}
		if first == nil {
			first = full
		} else if !mapsEqual(first, full) {
			t.Errorf("%s's environment differs from %s's; replicas must be interchangeable", name, replicaServices[0])
		}

		// Only nginx is published: a client reaching one replica directly
		// would bypass the round-robin the stack is there to show.
		if len(s.Ports) > 0 {
			t.Errorf("%s publishes ports %v; traffic must go through nginx", name, s.Ports)
		}
		// The image is distroless: no shell or curl to run a health check.
		if hc := s.HealthCheck; hc != nil && !hc.Disable {
			t.Errorf("%s has a health check, but its image has no shell or curl to run it", name)
		}
		if s.Image == "" || s.Build == nil {
			t.Errorf("%s: want both build (the Dockerfile) and image", name)
		}

		for dep, d := range s.DependsOn {
			if d.Condition == "" {
				t.Errorf("%s depends_on %s without a condition", name, dep)
			}
		}
		for _, dep := range []string{"postgres", "valkey"} {
			if d, ok := s.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s: depends_on %s must wait for service_healthy (got %+v)", name, dep, d)
			}
		}

		checkReplicaWiring(t, p, s, full)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// checkReplicaWiring follows every address in a replica's environment to
// the service that must answer it, with matching credentials and ports.
func checkReplicaWiring(t *testing.T, p *types.Project, s types.ServiceConfig, env map[string]string) {
	t.Helper()
	dependsOn := func(dep string) {
		t.Helper()
		if _, ok := s.DependsOn[dep]; !ok {
			t.Errorf("%s uses %s but does not depend on it", s.Name, dep)
		}
	}

	db, err := url.Parse(env["DATABASE_URL"])
	if err != nil {
		t.Fatalf("%s: DATABASE_URL: %v", s.Name, err)
	}
	pg := serviceEnv(t, service(t, p, db.Hostname()))
	pass, _ := db.User.Password()
	if db.User.Username() != pg["POSTGRES_USER"] || pass != pg["POSTGRES_PASSWORD"] || strings.TrimPrefix(db.Path, "/") != pg["POSTGRES_DB"] {
		t.Errorf("%s: DATABASE_URL user/password/database do not match the %s service's POSTGRES_USER/PASSWORD/DB", s.Name, db.Hostname())
	}
	if db.Port() != "" && db.Port() != "5432" {
		t.Errorf("%s: DATABASE_URL port %s, PostgreSQL listens on 5432", s.Name, db.Port())
	}
	dependsOn(db.Hostname())

	vk, err := url.Parse(env["VALKEY_URL"])
	if err != nil {
		t.Fatalf("%s: VALKEY_URL: %v", s.Name, err)
	}
	service(t, p, vk.Hostname())
	dependsOn(vk.Hostname())

	lk, err := url.Parse(env["LIVEKIT_URL"])
	if err != nil {
		t.Fatalf("%s: LIVEKIT_URL: %v", s.Name, err)
	}
	lkSvc := service(t, p, lk.Hostname())
	dependsOn(lk.Hostname())
	if lk.Port() != "7880" {
		t.Errorf("%s: LIVEKIT_URL port %q, livekit-server listens on 7880", s.Name, lk.Port())
	}
	// `livekit-server --dev` accepts exactly the key devkey with secret "secret".
	if slices.Contains(lkSvc.Command, "--dev") && (env["LIVEKIT_API_KEY"] != "devkey" || env["LIVEKIT_API_SECRET"] != "secret") {
		t.Errorf("%s: LIVEKIT_API_KEY/SECRET must be devkey/secret for livekit-server --dev", s.Name)
	}
	if pub, err := url.Parse(env["PARLEY_LIVEKIT_PUBLIC_URL"]); err == nil && pub.Hostname() == "localhost" {
		if !publishes(lkSvc, pub.Port()) {
			t.Errorf("PARLEY_LIVEKIT_PUBLIC_URL %s, but %s does not publish port %s", pub, lkSvc.Name, pub.Port())
		}
	}
	if pub, err := url.Parse(env["PARLEY_PUBLIC_URL"]); err == nil && pub.Hostname() == "localhost" {
		if !publishes(service(t, p, "nginx"), pub.Port()) {
			t.Errorf("PARLEY_PUBLIC_URL %s, but nginx does not publish port %s", pub, pub.Port())
		}
	}

	if cs := env["AZURE_STORAGE_CONNECTION_STRING"]; cs != "" {
		checkAzurite(t, p, s, cs)
	}
	checkComposeJWTKeys(t, p, s, env["PARLEY_JWT_KEYS"])
}

func publishes(s types.ServiceConfig, port string) bool {
	for _, pc := range s.Ports {
		if pc.Published == port {
			return true
		}
	}
	return false
}

// checkAzurite matches the connection string's blob endpoint to the
// azurite service's host and port flags.
func checkAzurite(t *testing.T, p *types.Project, s types.ServiceConfig, cs string) {
	t.Helper()
	var endpoint string
	for part := range strings.SplitSeq(cs, ";") {
		if v, ok := strings.CutPrefix(part, "BlobEndpoint="); ok {
			endpoint = v
		}
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		t.Fatalf("%s: AZURE_STORAGE_CONNECTION_STRING has no usable BlobEndpoint (%q)", s.Name, endpoint)
	}
	az := service(t, p, u.Hostname())
	flag := func(name, def string) string {
		if i := slices.Index(az.Command, name); i >= 0 && i+1 < len(az.Command) {
			return az.Command[i+1]
		}
		return def
	}
	if port := flag("--blobPort", "10000"); u.Port() != port {
		t.Errorf("%s: BlobEndpoint port %s, azurite listens on %s", s.Name, u.Port(), port)
	}
	if host := flag("--blobHost", "127.0.0.1"); host != "0.0.0.0" {
		t.Errorf("azurite --blobHost %s: other containers cannot reach it", host)
	}
	if _, ok := s.DependsOn[u.Hostname()]; !ok {
		t.Errorf("%s uses %s but does not depend on it", s.Name, u.Hostname())
	}
}

// checkComposeJWTKeys follows PARLEY_JWT_KEYS to a read-only volume that a
// one-shot `parley keys generate` service fills before the replicas start,
// so every replica signs with the same key.
func checkComposeJWTKeys(t *testing.T, p *types.Project, s types.ServiceConfig, keysPath string) {
	t.Helper()
	mount, rel, ok := mountFor(s, keysPath)
	if !ok {
		t.Fatalf("%s: PARLEY_JWT_KEYS %s is on no mounted volume; replicas would not share it", s.Name, keysPath)
	}
	if !mount.ReadOnly {
		t.Errorf("%s: the JWK set volume should be read-only in the replicas", s.Name)
	}
	for dep, d := range s.DependsOn {
		gen := service(t, p, dep)
		i := slices.Index(gen.Command, "--out")
		if !slices.Contains(gen.Command, "generate") || i < 0 || i+1 >= len(gen.Command) {
			continue
		}
		genMount, genRel, ok := mountFor(gen, gen.Command[i+1])
		if !ok || genMount.Source != mount.Source || genRel != rel {
			t.Errorf("%s writes %s, which is not %s's %s", dep, gen.Command[i+1], s.Name, keysPath)
		}
		if d.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s must wait for %s with service_completed_successfully", s.Name, dep)
		}
		if gen.Image != s.Image {
			t.Errorf("%s runs image %q, the replicas %q", dep, gen.Image, s.Image)
		}
		return
	}
	t.Errorf("%s: no dependency runs `parley keys generate --out` into the JWK set volume", s.Name)
}

// mountFor returns the volume mount holding file, and file's path inside it.
func mountFor(s types.ServiceConfig, file string) (types.ServiceVolumeConfig, string, bool) {
	for _, v := range s.Volumes {
		target := strings.TrimSuffix(v.Target, "/")
		if rel, ok := strings.CutPrefix(file, target+"/"); ok {
			return v, rel, true
		}
	}
	return types.ServiceVolumeConfig{}, "", false
}

var (
	upstreamRE = regexp.MustCompile(`(?s)upstream\s+(\S+)\s*\{(.*?)\}`)
	serverRE   = regexp.MustCompile(`(?m)^\s*server\s+([^\s;]+)`)
	listenRE   = regexp.MustCompile(`(?m)^\s*listen\s+(\d+)`)
	passRE     = regexp.MustCompile(`(?m)^\s*(proxy_pass|grpc_pass)\s+(?:https?|grpcs?)://([^\s;/]+)`)
)

func TestComposeNginx(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	nginx := service(t, p, "nginx")
	if !strings.HasPrefix(nginx.Image, "nginx") {
		t.Errorf("nginx image %q", nginx.Image)
	}
	for _, r := range replicaServices {
		if d, ok := nginx.DependsOn[r]; !ok || d.Condition == "" {
			t.Errorf("nginx must depend on %s with a condition", r)
		}
	}

	var confPath string
	for _, v := range nginx.Volumes {
		if v.Target == "/etc/nginx/nginx.conf" {
			confPath = v.Source
		}
	}
	if confPath == "" {
		t.Fatal("nginx mounts no /etc/nginx/nginx.conf")
	}
	raw, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatalf("nginx config: %v", err)
	}
	conf := stripHashComments(string(raw))

	port := composeHTTPPort(t, p)
	want := []string{}
	for _, r := range replicaServices {
		want = append(want, net.JoinHostPort(r, port))
	}
	upstreams := map[string]bool{}
	for _, m := range upstreamRE.FindAllStringSubmatch(conf, -1) {
		name, body := m[1], m[2]
		upstreams[name] = true
		var servers []string
		for _, s := range serverRE.FindAllStringSubmatch(body, -1) {
			servers = append(servers, s[1])
		}
		slices.Sort(servers)
		if !slices.Equal(servers, want) {
			t.Errorf("upstream %s servers %v, want every replica %v", name, servers, want)
		}
		// Any of these pins a client to one replica.
		for _, sticky := range []string{"ip_hash", "hash ", "sticky"} {
			if strings.Contains(body, sticky) {
				t.Errorf("upstream %s uses %q: replicas are interchangeable, balance round-robin", name, strings.TrimSpace(sticky))
			}
		}
	}
	if len(upstreams) == 0 {
		t.Fatal("nginx.conf has no upstream")
	}
	passes := map[string]bool{}
	for _, m := range passRE.FindAllStringSubmatch(conf, -1) {
		passes[m[1]] = true
		if !upstreams[m[2]] {
			t.Errorf("%s to %s, which is not an upstream over the replicas", m[1], m[2])
		}
	}
	if !passes["grpc_pass"] || !passes["proxy_pass"] {
		t.Errorf("nginx.conf needs grpc_pass (gRPC over h2c) and proxy_pass (HTTP/1.1); has %v", passes)
	}
	if !strings.Contains(conf, "http2 on") {
		t.Error("nginx.conf lacks `http2 on`: gRPC clients speak h2c to nginx")
	}
	// PARLEY_TRUSTED_PROXIES believes nginx's X-Forwarded-For. Appending
	// ($proxy_add_x_forwarded_for) would keep whatever the client sent, and
	// with every address trusted the client would pick its own rate-limit
	// key; nginx must replace the header with the peer it saw.
	if strings.Contains(conf, "$proxy_add_x_forwarded_for") {
		t.Error("nginx.conf appends to X-Forwarded-For; set it to $remote_addr")
	}
	for _, d := range []string{"proxy_set_header X-Forwarded-For $remote_addr", "grpc_set_header X-Forwarded-For $remote_addr"} {
		if !strings.Contains(conf, d) {
			t.Errorf("nginx.conf lacks %q", d)
		}
	}

	var listens []string
	for _, m := range listenRE.FindAllStringSubmatch(conf, -1) {
		listens = append(listens, m[1])
	}
	for _, pc := range nginx.Ports {
		if !slices.Contains(listens, strconv.Itoa(int(pc.Target))) {
			t.Errorf("nginx publishes container port %d but listens on %v", pc.Target, listens)
		}
	}
}

func stripHashComments(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i] + "\n"
		}
		b.WriteString(line)
	}
	return b.String()
}

// composeHTTPPort is the port the replicas listen on: PARLEY_HTTP_ADDR from
// compose.yaml, else from the image's ENV, else config's default.
func composeHTTPPort(t *testing.T, p *types.Project) string {
	t.Helper()
	_, port, err := net.SplitHostPort(composeConfig(t, p).HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// composeConfig is the first replica's configuration: the image's ENV, then
// compose.yaml's environment.
func composeConfig(t *testing.T, p *types.Project) config.Config {
	t.Helper()
	full := map[string]string{}
	for k, v := range finalStage(t, parseDockerfile(t)).env {
		full[k] = v
	}
	for k, v := range serviceEnv(t, service(t, p, replicaServices[0])) {
		full[k] = v
	}
	cfg, err := config.Load(func(k string) string { return full[k] })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestComposeMetrics: the replicas serve /metrics on PARLEY_OPS_ADDR, which
// prometheus scrapes on every replica and nginx never reaches (its upstreams
// are the replicas' HTTP port, checked by TestComposeNginx).
func TestComposeMetrics(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	cfg := composeConfig(t, p)
	if cfg.OpsAddr == "" {
		t.Fatal("the replicas set no PARLEY_OPS_ADDR: /metrics would be served through nginx")
	}
	_, opsPort, err := net.SplitHostPort(cfg.OpsAddr)
	if err != nil {
		t.Fatalf("PARLEY_OPS_ADDR %q: %v", cfg.OpsAddr, err)
	}
	if opsPort == composeHTTPPort(t, p) {
		t.Fatalf("PARLEY_OPS_ADDR and PARLEY_HTTP_ADDR share port %s", opsPort)
	}

	prom := service(t, p, "prometheus")
	var confPath string
	for _, v := range prom.Volumes {
		if v.Target == "/etc/prometheus/prometheus.yml" {
			confPath = v.Source
		}
	}
	raw, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatalf("prometheus config (%q): %v", confPath, err)
	}
	var conf struct {
		ScrapeConfigs []struct {
			MetricsPath   string `json:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(raw, &conf); err != nil {
		t.Fatalf("%s: %v", confPath, err)
	}
	var targets, want []string
	for _, sc := range conf.ScrapeConfigs {
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("metrics_path %q, Parley serves /metrics", sc.MetricsPath)
		}
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
	}
	for _, r := range replicaServices {
		want = append(want, net.JoinHostPort(r, opsPort))
		if _, ok := prom.DependsOn[r]; !ok {
			t.Errorf("prometheus does not depend on %s", r)
		}
	}
	slices.Sort(targets)
	if !slices.Equal(targets, want) {
		t.Errorf("prometheus scrapes %v, want every replica's ops port %v", targets, want)
	}
	for _, pc := range prom.Ports {
		if pc.HostIP != "127.0.0.1" {
			t.Errorf("prometheus publishes %s:%s; publish it to 127.0.0.1 only", pc.HostIP, pc.Published)
		}
	}
}

// stage is one FROM section of the Dockerfile.
type stage struct {
	from, name string
	instr      [][2]string // instruction (upper case), arguments
	env        map[string]string
}

// parseDockerfile reads ../Dockerfile into stages. It understands what the
// file uses (comments, line continuations, KEY=VALUE ENV) and no more.
func parseDockerfile(t *testing.T) []stage {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	var logical string
	for line := range strings.Lines(string(raw)) {
		line = strings.TrimRight(line, "\r\n")
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, "\\"); ok {
			logical += cont + " "
			continue
		}
		logical += line
		fields := strings.Fields(logical)
		logical = ""
		if len(fields) == 0 {
			continue
		}
		cmd, args := strings.ToUpper(fields[0]), strings.Join(fields[1:], " ")
		if cmd == "FROM" {
			st := stage{from: fields[1], env: map[string]string{}}
			if len(fields) >= 4 && strings.EqualFold(fields[2], "AS") {
				st.name = fields[3]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			if cmd != "ARG" {
				t.Fatalf("Dockerfile: %s before FROM", cmd)
			}
			continue
		}
		st := &stages[len(stages)-1]
		st.instr = append(st.instr, [2]string{cmd, args})
		if cmd == "ENV" {
			for _, kv := range fields[1:] {
				if k, v, ok := strings.Cut(kv, "="); ok {
					st.env[k] = v
				}
			}
		}
	}
	if len(stages) == 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	return stages
}

func finalStage(t *testing.T, stages []stage) stage {
	t.Helper()
	return stages[len(stages)-1]
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a multi-stage build", len(stages))
	}
	final := finalStage(t, stages)
	build := map[string]stage{}
	for _, st := range stages[:len(stages)-1] {
		build[st.name] = st
	}

	var user string
	var copiedFromBuild bool
	for _, st := range stages {
		for _, in := range st.instr {
			if in[0] == "HEALTHCHECK" {
				t.Error("Dockerfile has a HEALTHCHECK; probes belong to the orchestrator (and distroless has no shell to run one)")
			}
		}
	}
	for _, in := range final.instr {
		switch in[0] {
		case "USER":
			user = in[1]
		case "COPY":
			for f := range strings.FieldsSeq(in[1]) {
				if from, ok := strings.CutPrefix(f, "--from="); ok {
					if _, ok := build[from]; ok {
						copiedFromBuild = true
					}
				}
			}
		case "RUN":
			t.Errorf("final stage runs %q; a minimal image has nothing to run it with", in[1])
		}
	}
	if !copiedFromBuild {
		t.Error("final stage copies nothing from a build stage")
	}
	uid, _, _ := strings.Cut(user, ":")
	if uid == "" || uid == "root" || uid == "0" {
		t.Errorf("final stage USER %q, want a non-root user", user)
	}
	// Kubernetes' runAsNonRoot can only verify a numeric uid.
	if _, err := strconv.Atoi(uid); err != nil {
		t.Errorf("final stage USER %q: use a numeric uid so runAsNonRoot can verify it", user)
	}

	var static bool
	for _, st := range stages[:len(stages)-1] {
		for _, in := range st.instr {
			if in[0] == "RUN" && strings.Contains(in[1], "go build") && strings.Contains(in[1], "CGO_ENABLED=0") {
				static = true
			}
		}
	}
	if !static {
		t.Error("no build stage runs `CGO_ENABLED=0 go build`: the binary must be static for a distroless/static base")
	}

	port := final.env["PARLEY_HTTP_ADDR"]
	if port != "" {
		_, p, err := net.SplitHostPort(port)
		if err != nil {
			t.Fatalf("ENV PARLEY_HTTP_ADDR=%s: %v", port, err)
		}
		var exposed bool
		for _, in := range final.instr {
			if in[0] == "EXPOSE" && slices.Contains(strings.Fields(in[1]), p) {
				exposed = true
			}
		}
		if !exposed {
			t.Errorf("ENV PARLEY_HTTP_ADDR=%s but port %s is not EXPOSEd", port, p)
		}
	}

	t.Run("build context covers the binary's packages", func(t *testing.T) {
		checkBuildCopies(t, stages[:len(stages)-1])
	})
}

// checkBuildCopies makes sure the build stages copy every directory that
// cmd/parley is built from, so the image builds from a clean checkout.
func checkBuildCopies(t *testing.T, stages []stage) {
	t.Helper()
	var copied []string
	wholeTree := false
	for _, st := range stages {
		for _, in := range st.instr {
			if in[0] != "COPY" {
				continue
			}
			var srcs []string
			for _, f := range strings.Fields(in[1]) {
				if !strings.HasPrefix(f, "--") {
					srcs = append(srcs, f)
				}
			}
			if len(srcs) < 2 {
				continue
			}
			for _, src := range srcs[:len(srcs)-1] {
				src = path.Clean(src)
				if src == "." {
					wholeTree = true
				}
				copied = append(copied, src)
			}
		}
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if !wholeTree && !slices.Contains(copied, f) {
			t.Errorf("the build stage does not copy %s", f)
		}
	}
	if wholeTree {
		return
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	list := exec.CommandContext(t.Context(), "go", "list", "-deps", "-f",
		"{{if not .Standard}}{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}{{end}}", "./cmd/parley")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for dir := range strings.FieldsSeq(string(out)) {
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			t.Fatal(err)
		}
		rel = filepath.ToSlash(rel)
		if !slices.ContainsFunc(copied, func(c string) bool { return rel == c || strings.HasPrefix(rel, c+"/") }) {
			t.Errorf("cmd/parley needs %s, which the Dockerfile does not copy", rel)
		}
	}
}
