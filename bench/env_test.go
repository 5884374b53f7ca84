//go:build bench

package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/parley-dev/parley/bench/load"
	"github.com/parley-dev/parley/internal/testenv"
)

// goBuild builds a package of this module into dir and returns the binary;
// flags go to go build before the package.
func goBuild(t *testing.T, dir, pkg, name string, flags ...string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", append(append([]string{"build", "-trimpath", "-o", bin}, flags...), pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// protojsonOverlay is go build's -overlay for a Parley without the
// hand-written JSON codec: jsoncodec.go is replaced by a jsonCodecs that
// installs nothing, so connect's protojson codec serves JSON.
func protojsonOverlay(t *testing.T, dir string) string {
	t.Helper()
	src, err := filepath.Abs("../internal/rpc/jsoncodec.go")
	if err != nil {
		t.Fatal(err)
	}
	stub := filepath.Join(dir, "jsoncodec-off.go")
	const code = "package rpc\n\nimport \"connectrpc.com/connect\"\n\nfunc jsonCodecs() []connect.HandlerOption { return nil }\n"
	if err := os.WriteFile(stub, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "overlay-protojson.json")
	writeJSON(t, overlay, map[string]any{"Replace": map[string]string{src: stub}})
	return overlay
}

// runCmd runs a short command and returns its stdout.
func runCmd(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, _ := runCmdCPU(t, env, name, args...)
	return out
}

// runCmdCPU runs a command and returns its stdout and CPU time.
func runCmdCPU(t *testing.T, env []string, name string, args ...string) (string, time.Duration) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return stdout.String(), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// replica is a Parley process started from the built binary.
type replica struct {
	name    string
	cmd     *exec.Cmd
	addr    string
	opsAddr string
	logPath string
	startup time.Duration
	exited  chan struct{}
}

func (r *replica) url() string { return "http://" + r.addr }
func (r *replica) pid() int    { return r.cmd.Process.Pid }

// startReplica starts `parley serve` and measures its start-up: from the
// exec to the first successful authenticated call (GetProfile with token).
func startReplica(t *testing.T, name, bin, dir string, env map[string]string, token string) *replica {
	t.Helper()
	r := &replica{
		name:    name,
		addr:    fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		opsAddr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		logPath: filepath.Join(dir, name+".log"),
		exited:  make(chan struct{}),
	}
	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	r.cmd = exec.Command(bin, "serve")
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PARLEY_HTTP_ADDR=" + r.addr, "PARLEY_OPS_ADDR=" + r.opsAddr}
	for k, v := range env {
		r.cmd.Env = append(r.cmd.Env, k+"="+v)
	}
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	probe := func() bool {
		req, _ := http.NewRequest(http.MethodPost, r.url()+"/parley.v1.UserService/GetProfile", strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	start := time.Now()
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(r.stop)
	for !probe() {
		select {
		case <-r.exited:
			t.Fatalf("%s exited during start-up:\n%s", name, tail(r.logPath))
		default:
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("%s: no successful call after 60 s:\n%s", name, tail(r.logPath))
		}
		time.Sleep(time.Millisecond)
	}
	r.startup = time.Since(start)
	return r
}

func (r *replica) stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(15 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// rssParts reads the anonymous and file-backed parts of VmRSS (KiB).
func rssParts(pid int) (anon, file int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "RssAnon:":
			anon = v
		case "RssFile:":
			file = v
		}
	}
	return anon, file
}

// procStatus reads VmRSS and VmHWM (KiB) of a process.
func procStatus(pid int) (rss, hwm int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// peakMeter tracks a process's peak resident memory during one load: the
// kernel's high-water mark is reset first (clear_refs 5), and VmRSS is also
// sampled in case the reset is not permitted.
type peakMeter struct {
	pid  int
	stop chan struct{}
	done chan struct{}
	max  int64
}

func meterPeak(pid int) *peakMeter {
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
	m := &peakMeter{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, _ := procStatus(pid); rss > m.max {
				m.max = rss
			}
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

// Peak returns the peak in MiB.
func (m *peakMeter) Peak() float64 {
	close(m.stop)
	<-m.done
	_, hwm := procStatus(m.pid)
	return float64(max(hwm, m.max)) / 1024
}

// runLoadgen runs the load generator and decodes its result.
func runLoadgen(t *testing.T, bin, dir string, args ...string) load.Result {
	t.Helper()
	out := filepath.Join(dir, fmt.Sprintf("loadgen-%d.json", time.Now().UnixNano()))
	cmd := exec.Command(bin, append(args, "-out", out)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("loadgen %v: %v\n%s", args, err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res load.Result
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// facts describe the machine and servers for the report.
type facts struct {
	Date       string
	CPU        string
	NProc      int
	MemTotal   string
	Kernel     string
	GoVersion  string
	PostgreSQL string
	PGSettings []string
	Valkey     string
	LoadBefore string
	LoadAfter  string
}

func machineFacts() facts {
	f := facts{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				f.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				f.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f.Kernel = strings.TrimSpace(string(b))
	}
	f.LoadBefore = loadAvg()
	return f
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// fetch GETs a URL into a file (profiles).
func fetch(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.ReadFrom(resp.Body)
	return err
}

// background runs f in a goroutine; wait blocks until it returns.
func background(f func()) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(f)
	return wg.Wait
}

// clockTick is the unit of /proc/<pid>/stat's CPU times (sysconf CLK_TCK,
// 100 on every Linux this runs on).
const clockTick = 10 * time.Millisecond

// procStat reads a process's name, parent, own CPU time and its reaped
// children's CPU time.
func procStat(pid int) (comm string, ppid int, self, children time.Duration, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, 0, 0, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, 0, 0, false
	}
	comm = s[open+1 : end]
	f := strings.Fields(s[end+1:])
	// f[0] is the state (field 3); utime is field 14, so f[11].
	if len(f) < 15 {
		return "", 0, 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	n := func(i int) time.Duration { v, _ := strconv.ParseInt(f[i], 10, 64); return time.Duration(v) * clockTick }
	return comm, ppid, n(11) + n(12), n(13) + n(14), true
}

// cpuSnapshot is the CPU time used so far by this benchmark's servers:
// the replica, PostgreSQL (the postmaster started by this process, its live
// backends and the backends it has reaped) and Valkey.
type cpuSnapshot struct {
	parley, postgres, valkey time.Duration
	// busy is the whole machine's non-idle CPU time (/proc/stat), and at
	// when it was read, to tell how much other processes used meanwhile.
	busy time.Duration
	at   time.Time
}

// machineBusy reads the machine's total non-idle CPU time.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	for i, v := range f[1:] {
		// user nice system idle iowait irq softirq steal: idle and iowait
		// are not busy; guest time is already in user.
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * clockTick
}

func takeCPU(parleyPID int) cpuSnapshot {
	s := cpuSnapshot{busy: machineBusy(), at: time.Now()}
	if parleyPID > 0 {
		_, _, self, _, _ := procStat(parleyPID)
		s.parley = self
	}
	dirs, _ := os.ReadDir("/proc")
	type proc struct {
		comm           string
		ppid           int
		self, children time.Duration
	}
	procs := map[int]proc{}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if comm, ppid, self, children, ok := procStat(pid); ok {
			procs[pid] = proc{comm, ppid, self, children}
		}
	}
	me := os.Getpid()
	for pid, p := range procs {
		switch {
		case p.ppid == me && p.comm == "postgres": // the postmaster
			s.postgres += p.self + p.children
		case p.comm == "postgres" && procs[p.ppid].ppid == me && procs[p.ppid].comm == "postgres":
			s.postgres += p.self
		case p.ppid == me && (p.comm == "redis-server" || p.comm == "valkey-server"):
			s.valkey += p.self
		}
		_ = pid
	}
	return s
}

func (s cpuSnapshot) sub(o cpuSnapshot) cpuSnapshot {
	return cpuSnapshot{parley: s.parley - o.parley, postgres: s.postgres - o.postgres, valkey: s.valkey - o.valkey,
		busy: s.busy - o.busy, at: o.at.Add(s.at.Sub(o.at))}
}
