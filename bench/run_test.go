//go:build bench

package bench_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/parley-dev/parley/bench/load"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

var (
	flagDuration  = flag.Duration("bench.duration", 20*time.Second, "measured time of each load")
	flagWarmup    = flag.Duration("bench.warmup", 2*time.Second, "unmeasured warm-up before each load")
	flagClients   = flag.String("bench.clients", "16,64", "concurrent clients of the unary loads")
	flagStreams   = flag.String("bench.streams", "1000,10000", "idle WatchMessages streams of the fan-out loads")
	flagRate      = flag.Float64("bench.watch-rate", 200, "turns per second saved during the fan-out loads")
	flagScale     = flag.String("bench.scale", "10000", "stored-message counts of the scaling loads (10000, 10000000)")
	flagRPCs      = flag.String("bench.rpcs", "SaveTurn,ListMessages", "unary RPCs to load")
	flagProtos    = flag.String("bench.protocols", "connect-json-http1,grpc-h2c,rest-json-http1", "protocols of the unary loads")
	flagProtojson = flag.Bool("bench.protojson", true, "also run the Connect JSON loads on a replica built without the hand-written JSON codec (connect's protojson)")
	flagProfile   = flag.Bool("bench.profile", true, "profile Parley under load after the measurements")
	flagOut       = flag.String("bench.out", "RESULTS.md", "report to write")
)

const (
	users           = 1000
	messagesPerConv = 60
	scaleConvs      = 200
	rateLimit       = "50000000" // per minute: high enough never to refuse, still enforced (one check per request)
)

// bench holds one run's servers, binaries and results.
type bench struct {
	t         *testing.T
	ctx       context.Context
	dir       string
	srv       *testenv.Postgres
	valkeyURL string
	valkey    valkey.Client
	parleyBin string
	// protojsonBin is Parley built without rpc's hand-written JSON codec.
	protojsonBin string
	loadgenBin   string
	keysPath     string
	facts        facts
	rows         []row
	roundTrips   []roundTrip
	profiles     []profileSummary
	notes        []string
	runs         int
}

// row is one line of the table.
type row struct {
	Workload string
	Protocol string
	Clients  string
	RPS      float64
	P50, P99 float64
	Ratio    float64 // to the pgbench limit; 0 when there is none
	Errors   int64
	PeakMiB  float64
	Note     string
	// CPU per request in the measured window, µs; zero when not measured.
	CPU cpuPerRequest
}

// cpuPerRequest splits the machine's CPU time per request between the
// processes of a run.
type cpuPerRequest struct {
	Parley, Postgres, Valkey, Client float64
	// Others is the cores the rest of the machine (other users' processes)
	// kept busy during the window.
	Others float64
}

func (c cpuPerRequest) total() float64 { return c.Parley + c.Postgres + c.Valkey + c.Client }

func perRequest(d cpuSnapshot, window time.Duration, client time.Duration, requests int64) cpuPerRequest {
	if requests <= 0 {
		return cpuPerRequest{}
	}
	us := func(t time.Duration) float64 { return float64(t) / float64(time.Microsecond) / float64(requests) }
	c := cpuPerRequest{Parley: us(d.parley), Postgres: us(d.postgres), Valkey: us(d.valkey), Client: us(client)}
	if window > 0 {
		c.Others = max(0, (d.busy-d.parley-d.postgres-d.valkey-client).Seconds()/window.Seconds())
	}
	return c
}

// cpuAfter snapshots the servers' CPU once delay has passed (the warm-up);
// the returned function waits for it and returns the usage since.
func cpuAfter(pid int, delay time.Duration) func() (cpuSnapshot, time.Duration) {
	start := make(chan cpuSnapshot, 1)
	go func() {
		time.Sleep(delay)
		start <- takeCPU(pid)
	}()
	return func() (cpuSnapshot, time.Duration) {
		end := takeCPU(pid)
		begin := <-start
		return end.sub(begin), end.at.Sub(begin.at)
	}
}

func TestBench(t *testing.T) {
	b := setup(t)
	mainDB := b.database("parley")
	main := seedSet{idBase: 0, conversations: users, messages: messagesPerConv}
	took := seed(b.ctx, t, mainDB.db, main)
	t.Logf("seeded %d users, %d conversations of %d messages in %v", users, users, messagesPerConv, took.Round(time.Millisecond))
	toks := tokens(t, b.keysPath, main)

	a := b.replica("parley-a", mainDB.url, toks[0])
	time.Sleep(time.Second)
	idle, _ := procStatus(a.pid())
	anon, file := rssParts(a.pid())
	b.rows = append(b.rows,
		row{Workload: "Start-up to first authenticated call (migrated DB)", Protocol: "Connect JSON", RPS: -1, P50: ms(a.startup), P99: -1, Note: "ms, exec to first 200 of GetProfile"},
		row{Workload: "Idle resident memory", RPS: -1, P50: -1, P99: -1, PeakMiB: float64(idle) / 1024,
			Note: fmt.Sprintf("VmRSS 1 s after start-up: %.1f MiB anonymous, %.1f MiB file-backed (the binary's pages); %s",
				float64(anon)/1024, float64(file)/1024, b.goMemory(a))},
	)

	// Unary loads: the pgbench limit first, then Parley over each protocol.
	specPath := filepath.Join(b.dir, "spec-main.json")
	writeSpec(b.ctx, t, mainDB.db, main, toks, specPath)
	saveScript, err := saveTurnScript(main.idBase, main.conversations)
	if err != nil {
		t.Fatal(err)
	}
	listScript, err := listMessagesScript(main.idBase, main.conversations)
	if err != nil {
		t.Fatal(err)
	}
	protocols := selected(t, *flagProtos, load.ProtocolConnectJSON, load.ProtocolGRPC, load.ProtocolREST)
	if slices.Contains(protocols, load.ProtocolREST) && !b.restAvailable(a, toks[0]) {
		protocols = slices.DeleteFunc(protocols, func(p string) bool { return p == load.ProtocolREST })
		b.notes = append(b.notes, "The seed's REST paths (/api/v1/...) answered 404 on this build: not measured.")
	}
	// The same Connect JSON loads on a replica whose JSON is connect's
	// protojson codec: the hand-written codec stays only while it saves CPU.
	var pj *replica
	if *flagProtojson && slices.Contains(protocols, load.ProtocolConnectJSON) {
		b.protojsonBin = goBuild(t, b.dir, "../cmd/parley", "parley-protojson", "-overlay", protojsonOverlay(t, b.dir))
		pj = b.startReplica(b.protojsonBin, "parley-protojson", mainDB.url, toks[0])
	}
	workloads := map[string]string{load.RPCSaveTurn: saveScript, load.RPCListMessages: listScript}
	var codecRows []row
	for _, c := range intList(t, *flagClients) {
		for _, rpc := range selected(t, *flagRPCs, load.RPCSaveTurn, load.RPCListMessages) {
			limit := b.pgbench(mainDB.url, rpc, workloads[rpc], c, "")
			for _, p := range protocols {
				r := b.parley(a, specPath, rpc, p, c, limit.RPS, "")
				if p == load.ProtocolConnectJSON && pj != nil {
					codecRows = append(codecRows, r, b.parleyAs(pj, protojsonProtocol, specPath, rpc, p, c, limit.RPS, ""))
				}
			}
		}
	}
	if pj != nil {
		pj.stop()
		b.notes = append(b.notes, codecNote(codecRows))
	}

	// Round trips per RPC, from PostgreSQL's and Valkey's own counters.
	for _, rpc := range []string{load.RPCSaveTurn, load.RPCListMessages} {
		b.countRoundTrips(mainDB, a, specPath, rpc)
	}

	// WatchMessages fan-out: streams on A, turns saved through B.
	bRep := b.replica("parley-b", mainDB.url, toks[0])
	watchSpec := filepath.Join(b.dir, "spec-watch.json")
	for _, n := range intList(t, *flagStreams) {
		writeSpec(b.ctx, t, mainDB.db, main, toks, watchSpec)
		b.fanout(a, bRep, watchSpec, n)
	}
	bRep.stop()

	// The CPU and allocation profiles are of the unary loads: a run without
	// them (-bench.clients=) keeps only the fan-out's heap profiles.
	if *flagProfile && len(intList(t, *flagClients)) > 0 {
		b.profile(a, specPath)
	}
	a.stop()

	for _, n := range intList(t, *flagScale) {
		b.scaling(n)
	}
	b.report()
}

// TestBenchScale is `make bench-scale`: SaveTurn and ListMessages with 10
// thousand and with 10 million stored messages. Seeding ten million
// messages durably takes about two minutes here, which does not fit in
// `make bench`'s fifteen.
func TestBenchScale(t *testing.T) {
	b := setup(t)
	for _, n := range []int{10_000, 10_000_000} {
		b.scaling(n)
	}
	b.report()
}

func setup(t *testing.T) *bench {
	b := &bench{t: t, ctx: t.Context(), dir: t.TempDir(), facts: machineFacts()}
	t.Logf("load average at start: %s", b.facts.LoadBefore)
	b.srv = testenv.StartPostgres(t, testenv.PostgresOptions{
		Durable:        true,
		MaxConnections: 300,
		Settings: []string{
			// Room for the 10M-message seed without checkpoints mid-way.
			"max_wal_size=8GB",
			// Statement counts per RPC; the same small overhead for pgbench
			// and Parley.
			"shared_preload_libraries=pg_stat_statements",
		},
	})
	b.facts.PGSettings = b.srv.Settings()
	vk := testenv.NewValkey(t)
	b.valkeyURL = vk.URL()
	b.valkey = testenv.ValkeyClient(t, b.valkeyURL)
	info, err := b.valkey.Do(b.ctx, b.valkey.B().Info().Section("server").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			b.facts.Valkey = "redis-server " + v
		}
	}
	b.parleyBin = goBuild(t, b.dir, "../cmd/parley", "parley")
	b.loadgenBin = goBuild(t, b.dir, "./loadgen", "loadgen")
	b.keysPath = filepath.Join(b.dir, "keys.json")
	runCmd(t, os.Environ(), b.parleyBin, "keys", "generate", "--out", b.keysPath)
	return b
}

type database struct {
	name string
	url  string
	db   *sql.DB
}

// database creates a database migrated by `parley migrate up`, with
// pg_stat_statements.
func (b *bench) database(name string) database {
	t := b.t
	u := b.srv.CreateDatabase(t, name)
	runCmd(t, []string{"DATABASE_URL=" + u, "PARLEY_JWT_KEYS=" + b.keysPath}, b.parleyBin, "migrate", "up")
	db, err := postgres.Open(b.ctx, u, postgres.Options{MaxOpenConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.DB.ExecContext(b.ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
		t.Fatal(err)
	}
	var version string
	if err := db.DB.QueryRowContext(b.ctx, "SHOW server_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	b.facts.PostgreSQL = "PostgreSQL " + version
	return database{name: name, url: u, db: db.DB}
}

func (b *bench) replica(name, dbURL, token string) *replica {
	return b.startReplica(b.parleyBin, name, dbURL, token)
}

func (b *bench) startReplica(bin, name, dbURL, token string) *replica {
	r := startReplica(b.t, name, bin, b.dir, map[string]string{
		"DATABASE_URL":                       dbURL,
		"VALKEY_URL":                         b.valkeyURL,
		"PARLEY_JWT_KEYS":                    b.keysPath,
		"LIVEKIT_API_KEY":                    "APIbench",
		"LIVEKIT_API_SECRET":                 "a-bench-secret-of-at-least-thirty-two-characters",
		"PARLEY_RATE_LIMIT_USER_PER_MINUTE":  rateLimit,
		"PARLEY_RATE_LIMIT_IP_PER_MINUTE":    rateLimit,
		"PARLEY_RATE_LIMIT_AGENT_PER_MINUTE": rateLimit,
		"PARLEY_SHUTDOWN_DELAY":              "0s",
		"PARLEY_BLOB_DIR":                    filepath.Join(b.dir, "blobs"),
	}, token)
	b.t.Logf("%s started in %v", name, r.startup.Round(time.Microsecond))
	return r
}

func (b *bench) restAvailable(r *replica, token string) bool {
	req, _ := http.NewRequestWithContext(b.ctx, http.MethodGet, r.url()+"/api/v1/profile", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

var protocolNames = map[string]string{
	load.ProtocolConnectJSON: "Connect JSON, HTTP/1.1",
	load.ProtocolGRPC:        "gRPC, HTTP/2 (h2c)",
	load.ProtocolREST:        "REST JSON, HTTP/1.1",
}

// protojsonProtocol names the rows of the replica built without the
// hand-written JSON codec.
const protojsonProtocol = "Connect JSON, HTTP/1.1, protojson codec"

// selected returns the names of list (comma-separated) in the order of all,
// failing on one it does not know.
func selected(t *testing.T, list string, all ...string) []string {
	var out []string
	want := strings.Split(list, ",")
	for _, name := range all {
		if slices.Contains(want, name) {
			out = append(out, name)
		}
	}
	for _, w := range want {
		if w = strings.TrimSpace(w); w != "" && !slices.Contains(all, w) {
			t.Fatalf("unknown name %q (want some of %v)", w, all)
		}
	}
	return out
}

// codecNote compares Parley's CPU per request with the hand-written JSON
// codec and with protojson, from pairs of rows of the same load.
func codecNote(rows []row) string {
	var parts []string
	for i := 0; i+1 < len(rows); i += 2 {
		fast, pj := rows[i], rows[i+1]
		parts = append(parts, fmt.Sprintf("%s at %s clients %.0f µs with it vs %.0f µs with protojson (%+.0f%%; %.0f vs %.0f req/s)",
			fast.Workload, fast.Clients, fast.CPU.Parley, pj.CPU.Parley, 100*(fast.CPU.Parley/pj.CPU.Parley-1), fast.RPS, pj.RPS))
	}
	return "**The hand-written JSON codec** (internal/rpc/jsoncodec.go) against connect's protojson codec, Parley's CPU per request over Connect JSON, same run: " +
		strings.Join(parts, "; ") + "."
}

// parley measures one unary load on replica r.
func (b *bench) parley(r *replica, specPath, rpc, protocol string, clients int, limit float64, label string) row {
	return b.parleyAs(r, protocolNames[protocol], specPath, rpc, protocol, clients, limit, label)
}

// parleyAs is parley with the row's protocol column named by the caller.
func (b *bench) parleyAs(r *replica, column, specPath, rpc, protocol string, clients int, limit float64, label string) row {
	b.runs++
	m := meterPeak(r.pid())
	cpu := cpuAfter(r.pid(), *flagWarmup)
	res := runLoadgen(b.t, b.loadgenBin, b.dir, "-mode", "unary", "-spec", specPath, "-url", r.url(),
		"-rpc", rpc, "-protocol", protocol, "-clients", strconv.Itoa(clients),
		"-warmup", flagWarmup.String(), "-duration", flagDuration.String(), "-run-id", fmt.Sprintf("b%d-%d", time.Now().Unix(), b.runs))
	rw := row{
		Workload: rpc + label, Protocol: column, Clients: strconv.Itoa(clients),
		RPS: res.RPS, P50: res.Latency.P50, P99: res.Latency.P99, Errors: res.Errors, PeakMiB: m.Peak(),
	}
	d, window := cpu()
	rw.CPU = perRequest(d, window, time.Duration(res.ClientCPUSeconds*float64(time.Second)), res.Requests)
	if limit > 0 {
		rw.Ratio = res.RPS / limit
	}
	if len(res.ErrorSamples) > 0 {
		rw.Note = "errors: " + strings.Join(res.ErrorSamples, " | ")
	}
	b.add(rw)
	return rw
}

func (b *bench) add(r row) {
	b.rows = append(b.rows, r)
	b.t.Logf("%-28s %-24s %5s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  ratio %5.2f  errors %d  peak %.0f MiB  others %.2f cores %s",
		r.Workload, r.Protocol, r.Clients, r.RPS, r.P50, r.P99, r.Ratio, r.Errors, r.PeakMiB, r.CPU.Others, r.Note)
}

var (
	tpsRE    = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	failedRE = regexp.MustCompile(`number of failed transactions: ([0-9]+)`)
)

// pgbench measures the limit: the same statements with nothing in between.
func (b *bench) pgbench(dbURL, rpc, script string, clients int, label string) row {
	t := b.t
	b.runs++
	scriptPath := filepath.Join(b.dir, fmt.Sprintf("pgbench-%d.sql", b.runs))
	if err := os.WriteFile(scriptPath, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	logPrefix := filepath.Join(b.dir, fmt.Sprintf("pgbench-log-%d", b.runs))
	args := func(d time.Duration, logged bool) []string {
		a := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(int(d.Seconds())),
			"-f", scriptPath}
		a = append(a, pgbenchDefines(userMessage, assistantMessage, load.PageSize+1)...)
		if logged {
			a = append(a, "-l", "--log-prefix="+logPrefix)
		}
		return append(a, dbURL)
	}
	if *flagWarmup >= time.Second {
		runCmd(t, os.Environ(), b.srv.Bin("pgbench"), args(*flagWarmup, false)...)
	}
	before := takeCPU(0)
	out, clientCPU := runCmdCPU(t, os.Environ(), b.srv.Bin("pgbench"), args(*flagDuration, true)...)
	after := takeCPU(0)
	cpu, window := after.sub(before), after.at.Sub(before.at)
	rw := row{Workload: rpc + label, Protocol: "pgbench, same SQL (limit)", Clients: strconv.Itoa(clients), Ratio: 1}
	if m := tpsRE.FindStringSubmatch(out); m != nil {
		rw.RPS, _ = strconv.ParseFloat(m[1], 64)
	} else {
		t.Fatalf("pgbench output without tps:\n%s", out)
	}
	if m := failedRE.FindStringSubmatch(out); m != nil {
		rw.Errors, _ = strconv.ParseInt(m[1], 10, 64)
	}
	logs, _ := filepath.Glob(logPrefix + ".*")
	var lat []time.Duration
	for _, path := range logs {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 {
				continue
			}
			us, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				continue // failed or skipped, counted by pgbench itself
			}
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
		os.Remove(path)
	}
	l := load.Summarize(lat)
	rw.P50, rw.P99 = l.P50, l.P99
	rw.CPU = perRequest(cpu, window, clientCPU, int64(len(lat)))
	b.add(rw)
	return rw
}

// fanout measures WatchMessages delivery from SaveTurn's answer (through
// replica w) to every stream (on replica a).
func (b *bench) fanout(a, w *replica, specPath string, streams int) {
	m := meterPeak(a.pid())
	var wait func()
	if *flagProfile {
		// What the replica holds per stream, once they are all open.
		wait = background(func() {
			time.Sleep(*flagDuration / 2)
			b.profileHeap(a, fmt.Sprintf("WatchMessages-%d-streams", streams))
		})
	}
	res := runLoadgen(b.t, b.loadgenBin, b.dir, "-mode", "watch", "-spec", specPath, "-url", a.url(), "-save-url", w.url(),
		"-streams", strconv.Itoa(streams), "-rate", strconv.FormatFloat(*flagRate, 'f', -1, 64),
		"-duration", flagDuration.String(), "-run-id", fmt.Sprintf("w%d-%d", time.Now().Unix(), streams))
	rw := row{
		Workload: "WatchMessages fan-out delivery", Protocol: protocolNames[load.ProtocolGRPC],
		Clients: fmt.Sprintf("%d streams", streams), RPS: res.RPS, P50: res.Latency.P50, P99: res.Latency.P99,
		Errors: res.Errors, PeakMiB: m.Peak(),
		Note: fmt.Sprintf("%d turns/s saved via replica B (p99 answer %.1f ms); %d deliveries; streams opened in %.1f s; %d delivered before the answer arrived",
			int(*flagRate), res.SaveLatency.P99, res.Deliveries, res.OpenSeconds, res.EarlyDelivered),
	}
	if len(res.ErrorSamples) > 0 {
		rw.Note += "; errors: " + strings.Join(res.ErrorSamples, " | ")
	}
	if res.Missing+res.Duplicates+res.OutOfOrder > 0 {
		rw.Note += fmt.Sprintf("; missing %d, duplicates %d, out of order %d", res.Missing, res.Duplicates, res.OutOfOrder)
	}
	if wait != nil {
		wait()
	}
	b.add(rw)
}

// goMemory summarises the Go runtime's memory classes from the replica's
// /metrics.
func (b *bench) goMemory(r *replica) string {
	path := filepath.Join(b.dir, "metrics.txt")
	if err := fetch(b.ctx, "http://"+r.opsAddr+"/metrics", path); err != nil {
		return ""
	}
	text, _ := os.ReadFile(path)
	var parts []string
	for _, line := range strings.Split(string(text), "\n") {
		for _, name := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes", "go_memstats_next_gc_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_sys_bytes", "go_goroutines"} {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				if strings.HasSuffix(name, "_bytes") {
					parts = append(parts, fmt.Sprintf("%s %.1f MiB", strings.TrimSuffix(strings.TrimPrefix(name, "go_memstats_"), "_bytes"), f/(1<<20)))
				} else {
					parts = append(parts, fmt.Sprintf("%s %.0f", strings.TrimPrefix(name, "go_"), f))
				}
			}
		}
	}
	return strings.Join(parts, ", ")
}

// profileHeap saves the replica's live heap and goroutine count.
func (b *bench) profileHeap(r *replica, name string) {
	t := b.t
	if err := os.MkdirAll("profiles", 0o755); err != nil {
		t.Error(err)
		return
	}
	path := filepath.Join("profiles", name+"-heap.pb.gz")
	base := "http://" + r.opsAddr + "/debug/pprof/"
	if err := fetch(b.ctx, base+"heap", path); err != nil {
		t.Error(err)
		return
	}
	goroutines := filepath.Join(b.dir, "goroutines.txt")
	if err := fetch(b.ctx, base+"goroutine?debug=1", goroutines); err != nil {
		t.Error(err)
		return
	}
	g, _ := os.ReadFile(goroutines)
	first, _, _ := strings.Cut(string(g), "\n")
	rss, _ := procStatus(r.pid())
	out, err := exec.Command("go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=20", b.parleyBin, path).CombinedOutput()
	if err != nil {
		t.Errorf("pprof: %v\n%s", err, out)
		return
	}
	b.profiles = append(b.profiles, profileSummary{
		Name: fmt.Sprintf("%s, live heap (VmRSS %.0f MiB; %s; %s)", name, float64(rss)/1024, first, b.goMemory(r)),
		Top:  string(out),
	})
}

// scaling measures SaveTurn and ListMessages on a database holding n
// messages in scaleConvs conversations, against the pgbench limit there.
func (b *bench) scaling(n int) {
	t := b.t
	set := seedSet{idBase: 0x1000000 * (1 + len(strconv.Itoa(n))), conversations: scaleConvs, messages: n / scaleConvs}
	d := b.database(fmt.Sprintf("scale_%d", n))
	took := seed(b.ctx, t, d.db, set)
	label := fmt.Sprintf(" @ %s stored", humanCount(n))
	var size string
	if err := d.db.QueryRowContext(b.ctx, "SELECT pg_size_pretty(pg_total_relation_size('messages'))").Scan(&size); err != nil {
		t.Fatal(err)
	}
	b.notes = append(b.notes, fmt.Sprintf("Scaling database with %s messages (%d conversations of %d; messages table %s) seeded in %v.",
		humanCount(n), set.conversations, set.messages, size, took.Round(time.Second)))
	toks := tokens(t, b.keysPath, set)
	r := b.replica(fmt.Sprintf("parley-scale-%d", n), d.url, toks[0])
	b.rows = append(b.rows, row{Workload: "Start-up" + label, Protocol: "Connect JSON", RPS: -1, P50: ms(r.startup), P99: -1, Note: "ms"})
	specPath := filepath.Join(b.dir, fmt.Sprintf("spec-scale-%d.json", n))
	writeSpec(b.ctx, t, d.db, set, toks, specPath)
	save, err := saveTurnScript(set.idBase, set.conversations)
	if err != nil {
		t.Fatal(err)
	}
	list, err := listMessagesScript(set.idBase, set.conversations)
	if err != nil {
		t.Fatal(err)
	}
	const clients = 16
	limit := b.pgbench(d.url, load.RPCSaveTurn, save, clients, label)
	b.parley(r, specPath, load.RPCSaveTurn, load.ProtocolConnectJSON, clients, limit.RPS, label)
	limit = b.pgbench(d.url, load.RPCListMessages, list, clients, label)
	b.parley(r, specPath, load.RPCListMessages, load.ProtocolConnectJSON, clients, limit.RPS, label)
	r.stop()
}

func humanCount(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

func intList(t *testing.T, s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func writeJSON(t *testing.T, path string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// roundTrip is the statements and Valkey commands one RPC costs.
type roundTrip struct {
	RPC        string
	Requests   int64
	PG         []counted
	Valkey     []counted
	PGTotal    float64
	ValkeyTotl float64
	// ValkeyReads is Valkey's read events (total_reads_processed) per call:
	// with one client in a closed loop nothing is pipelined across calls,
	// so it counts round trips, which commandstats cannot (it also counts
	// the commands scripts run).
	ValkeyReads float64
}

type counted struct {
	Name   string
	PerRPC float64
}

// countRoundTrips runs a short load with the counters reset and divides
// what PostgreSQL (pg_stat_statements) and Valkey (commandstats) counted
// by the calls made.
func (b *bench) countRoundTrips(d database, r *replica, specPath, rpc string) {
	t := b.t
	if _, err := d.db.ExecContext(b.ctx, "SELECT pg_stat_statements_reset()"); err != nil {
		t.Fatal(err)
	}
	if err := b.valkey.Do(b.ctx, b.valkey.B().ConfigResetstat().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	res := runLoadgen(t, b.loadgenBin, b.dir, "-mode", "unary", "-spec", specPath, "-url", r.url(),
		"-rpc", rpc, "-protocol", load.ProtocolConnectJSON, "-clients", "1", "-warmup", "0s", "-duration", "3s",
		"-run-id", fmt.Sprintf("rt%d", time.Now().UnixNano()))
	calls := res.Requests + res.Errors
	rt := roundTrip{RPC: rpc, Requests: calls}
	names := map[string]string{}
	for name, stmt := range map[string]string{
		"AppendItemsSQL": postgres.AppendItemsSQL, "ReplayTurnSQL": postgres.ReplayTurnSQL, "LastSeqSQL": postgres.LastSeqSQL,
		"ListMessagesNewestSQL": postgres.ListMessagesNewestSQL, "ListMessagesOldestSQL": postgres.ListMessagesOldestSQL,
		"NewMessagesSQL": postgres.NewMessagesSQL, "LastSeqsSQL": postgres.LastSeqsSQL,
	} {
		names[normSQL(stmt)] = name
	}
	rows, err := d.db.QueryContext(b.ctx, `SELECT query, calls FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var q string
		var n int64
		if err := rows.Scan(&q, &n); err != nil {
			t.Fatal(err)
		}
		name, ok := names[normSQL(q)]
		if !ok {
			name = strings.Join(strings.Fields(q), " ")
			if len(name) > 70 {
				name = name[:70] + "…"
			}
		}
		per := float64(n) / float64(calls)
		if per < 0.005 {
			continue
		}
		rt.PG = append(rt.PG, counted{Name: name, PerRPC: per})
		rt.PGTotal += per
	}
	rows.Close()
	info, err := b.valkey.Do(b.ctx, b.valkey.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		callsText, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		n, _ := strconv.ParseInt(callsText, 10, 64)
		name = strings.ToUpper(strings.TrimPrefix(name, "cmdstat_"))
		if name == "CONFIG|RESETSTAT" || name == "INFO" || name == "CONFIG" {
			continue
		}
		per := float64(n) / float64(calls)
		if per < 0.005 {
			continue
		}
		rt.Valkey = append(rt.Valkey, counted{Name: name, PerRPC: per})
		rt.ValkeyTotl += per
	}
	stats, err := b.valkey.Do(b.ctx, b.valkey.B().Info().Section("stats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(stats, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_reads_processed:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			rt.ValkeyReads = float64(n) / float64(calls)
		}
	}
	b.roundTrips = append(b.roundTrips, rt)
	t.Logf("round trips per %s (%d calls): PostgreSQL %.2f %v, Valkey %.2f %v", rpc, calls, rt.PGTotal, rt.PG, rt.ValkeyTotl, rt.Valkey)
}

// profileSummary is the top of one pprof profile.
type profileSummary struct {
	Name string
	Top  string
}

// profile takes CPU and allocation profiles of replica r under 64 clients
// of each unary RPC over Connect JSON (these runs are not in the table).
func (b *bench) profile(r *replica, specPath string) {
	t := b.t
	outDir := "profiles"
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, rpc := range []string{load.RPCSaveTurn, load.RPCListMessages} {
		wait := background(func() {
			runLoadgen(t, b.loadgenBin, b.dir, "-mode", "unary", "-spec", specPath, "-url", r.url(),
				"-rpc", rpc, "-protocol", load.ProtocolConnectJSON, "-clients", "64", "-warmup", "1s", "-duration", "19s",
				"-run-id", fmt.Sprintf("p%d", time.Now().UnixNano()))
		})
		time.Sleep(2 * time.Second)
		base := "http://" + r.opsAddr + "/debug/pprof/"
		cpu := filepath.Join(outDir, rpc+"-cpu.pb.gz")
		allocs := filepath.Join(outDir, rpc+"-allocs.pb.gz")
		if err := fetch(b.ctx, base+"profile?seconds=8", cpu); err != nil {
			t.Fatal(err)
		}
		if err := fetch(b.ctx, base+"allocs?seconds=6", allocs); err != nil {
			t.Fatal(err)
		}
		wait()
		for _, p := range []struct{ path, kind, args string }{
			{cpu, "CPU", "-top -nodecount=25"},
			{cpu, "CPU (cumulative)", "-top -cum -nodecount=40"},
			{allocs, "allocated bytes", "-top -sample_index=alloc_space -nodecount=20"},
		} {
			out, err := exec.Command("go", append([]string{"tool", "pprof"}, append(strings.Fields(p.args), b.parleyBin, p.path)...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("pprof: %v\n%s", err, out)
			}
			name := fmt.Sprintf("%s, %s, 64 clients, Connect JSON", rpc, p.kind)
			b.profiles = append(b.profiles, profileSummary{Name: name, Top: string(out)})
			txt := strings.TrimSuffix(p.path, ".pb.gz") + "-" + strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(strings.ToLower(p.kind)) + ".txt"
			if err := os.WriteFile(txt, out, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

var constRE = regexp.MustCompile(`\$[0-9]+|\b[0-9]+\b`)

// normSQL compares statements the way pg_stat_statements records them:
// whitespace collapsed, and constants (which it replaces by $n) and
// parameters alike reduced to "?".
func normSQL(q string) string {
	return constRE.ReplaceAllString(strings.Join(strings.Fields(q), " "), "?")
}
