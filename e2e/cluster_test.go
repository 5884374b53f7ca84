//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/parley-dev/parley/internal/rtc/rtctest"
	"github.com/parley-dev/parley/internal/testenv"
)

const (
	livekitKey    = "e2e-key"
	livekitSecret = "e2e-secret-that-is-long-enough-for-hs256"
	// userPerMinute is the per-user budget; the rate-limit check spends it.
	userPerMinute = 60
	// shutdownDelay is how long a replica reports 503 on /readyz before it
	// stops accepting; the balancer polls far more often, as a Kubernetes
	// endpoint controller would, so no new request is sent to a closed
	// listener on SIGTERM.
	shutdownDelay = "1s"
)

// cluster is what the suite runs against: the binary, three replicas, the
// balancer in front and the fake LiveKit behind.
type cluster struct {
	bin      string
	dbURL    string
	env      []string
	replicas []*replica
	lb       *balancer
	livekit  *rtctest.Server
	outDir   string
}

// newCluster builds the binary and starts n replicas at once on an empty
// database, so their migrations race as they would in a deployment.
func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	outDir := os.Getenv("PARLEY_E2E_OUT")
	if outDir == "" {
		outDir = t.TempDir()
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &cluster{outDir: outDir, dbURL: testenv.EmptyDatabaseURL(t)}
	c.bin = filepath.Join(t.TempDir(), "parley")
	build := exec.Command("go", "build", "-o", c.bin, "../cmd/parley")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build parley: %v\n%s", err, out)
	}

	// The key set comes from the binary, as an operator would make it.
	keys := filepath.Join(t.TempDir(), "jwks.json")
	out, err := c.command(t, nil, "keys", "generate")
	if err != nil {
		t.Fatalf("parley keys generate: %v", err)
	}
	if err := os.WriteFile(keys, out, 0o600); err != nil {
		t.Fatal(err)
	}

	azure, container := testenv.AzuriteContainer(t)
	c.livekit = rtctest.NewServer(t, livekitKey, livekitSecret)
	c.env = []string{
		"PATH=" + os.Getenv("PATH"),
		"DATABASE_URL=" + c.dbURL,
		"VALKEY_URL=" + testenv.ValkeyURL(t),
		"PARLEY_JWT_KEYS=" + keys,
		"AZURE_STORAGE_CONNECTION_STRING=" + azure,
		"PARLEY_BLOB_CONTAINER=" + container,
		"LIVEKIT_URL=" + c.livekit.URL,
		"LIVEKIT_API_KEY=" + livekitKey,
		"LIVEKIT_API_SECRET=" + livekitSecret,
		"PARLEY_SHUTDOWN_DELAY=" + shutdownDelay,
		"PARLEY_DRAIN_TIMEOUT=10s",
		"PARLEY_WATCH_HEARTBEAT=2s",
		"PARLEY_DB_MAX_OPEN_CONNS=10",
		"PARLEY_DB_MAX_IDLE_CONNS=10",
		"PARLEY_LOG_LEVEL=info",
		fmt.Sprintf("PARLEY_RATE_LIMIT_USER_PER_MINUTE=%d", userPerMinute),
		// Every request reaches the replicas from the balancer's address,
		// and the agents' load is the point of the test.
		"PARLEY_RATE_LIMIT_IP_PER_MINUTE=10000000",
		"PARLEY_RATE_LIMIT_AGENT_PER_MINUTE=10000000",
	}

	for i := range n {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		r := &replica{index: i, addr: addr, bin: c.bin, env: append(c.env, "PARLEY_HTTP_ADDR="+addr),
			logPath: filepath.Join(outDir, fmt.Sprintf("replica-%d.log", i))}
		_ = os.Remove(r.logPath)
		t.Cleanup(r.kill)
		c.replicas = append(c.replicas, r)
	}
	for _, r := range c.replicas {
		if err := r.start(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, r := range c.replicas {
		wg.Go(func() { errs[i] = r.waitReady(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v\n%s", i, err, c.replicas[i].tail(40))
		}
	}

	addrs := make([]string, n)
	for i, r := range c.replicas {
		addrs[i] = r.addr
	}
	c.lb = newBalancer(t, addrs)
	for i := range n {
		if err := c.lb.waitReady(ctx, i, true); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range c.replicas {
				t.Logf("last lines of replica %d's log (%s):\n%s", r.index, r.logPath, r.tail(30))
			}
		}
	})
	return c
}

// command runs a parley subcommand against the cluster's database and
// returns its stdout.
func (c *cluster) command(t *testing.T, env []string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "DATABASE_URL=" + c.dbURL}, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, stderr.String())
	}
	return out, nil
}

// agentKey makes an agent key with the CLI, which prints it as its last line.
func (c *cluster) agentKey(t *testing.T, name string) string {
	t.Helper()
	out, err := c.command(t, nil, "agent-key", "create", "--name", name)
	if err != nil {
		t.Fatalf("parley agent-key create: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// replica is one parley process, restartable on the same address.
type replica struct {
	index   int
	addr    string
	bin     string
	env     []string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has been waited for
	exitErr error
	logFile *os.File
}

func (r *replica) base() string { return "http://" + r.addr }

// start starts the process; its output is appended to the replica's log.
func (r *replica) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.exited != nil {
		select {
		case <-r.exited:
		default:
			return fmt.Errorf("replica %d is still running", r.index)
		}
	}
	f, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(r.bin, "serve")
	cmd.Env = r.env
	cmd.Stdout, cmd.Stderr = f, f
	// The replicas die with the test process, however it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start replica %d: %w", r.index, err)
	}
	exited := make(chan struct{})
	r.cmd, r.exited, r.exitErr, r.logFile = cmd, exited, nil, f
	go func() {
		err := cmd.Wait()
		f.Close()
		r.mu.Lock()
		r.exitErr = err
		r.mu.Unlock()
		close(exited)
	}()
	return nil
}

// signal sends sig to the running process.
func (r *replica) signal(sig syscall.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return fmt.Errorf("replica %d never started", r.index)
	}
	return r.cmd.Process.Signal(sig)
}

// wait waits for the process to exit and returns its exit error.
func (r *replica) wait(ctx context.Context) error {
	r.mu.Lock()
	exited := r.exited
	r.mu.Unlock()
	select {
	case <-exited:
	case <-ctx.Done():
		return fmt.Errorf("replica %d did not exit: %w", r.index, ctx.Err())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exitErr
}

func (r *replica) kill() {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// waitReady polls /readyz until it answers 200, the process exits or ctx ends.
func (r *replica) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	r.mu.Lock()
	exited := r.exited
	r.mu.Unlock()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := client.Get(r.base() + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("replica %d exited before it was ready: %v", r.index, r.exitErr)
		case <-ctx.Done():
			return fmt.Errorf("replica %d not ready: %w", r.index, ctx.Err())
		case <-tick.C:
		}
	}
}

// tail returns the last n lines of the replica's log, leaving out the
// lines of successful calls.
func (r *replica) tail(n int) string {
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if !strings.Contains(l, `"msg":"rpc"`) || !strings.Contains(l, `"code":"ok"`) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// logLines returns the lines of the replica's log (every lifetime) that
// contain all of the given substrings.
func (r *replica) logLines(substrings ...string) ([]string, error) {
	f, err := os.Open(r.logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
next:
	for sc.Scan() {
		for _, s := range substrings {
			if !strings.Contains(sc.Text(), s) {
				continue next
			}
		}
		out = append(out, sc.Text())
	}
	return out, sc.Err()
}
