package rpc

import (
	"bufio"
	"bytes"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// rapidResetPairs is how many HEADERS+RST_STREAM pairs the probe of issue 12
// sent over one connection.
const rapidResetPairs = 20_000

// logLines counts what a server logs, by kind: the access log's line per
// call ("rpc"), warnings and errors, and anything else; it keeps the first
// few lines that are not the access log's.
type logLines struct {
	mu                  sync.Mutex
	access, warn, other int
	sample              []string
}

func (l *logLines) Write(p []byte) (int, error) {
	line := string(p)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case strings.Contains(line, " msg=rpc "):
		l.access++
		return len(p), nil
	case strings.Contains(line, " level=WARN ") || strings.Contains(line, " level=ERROR "):
		l.warn++
	default:
		l.other++
	}
	if len(l.sample) < 10 {
		l.sample = append(l.sample, strings.TrimSpace(line))
	}
	return len(p), nil
}

func (l *logLines) counts() (access, warn, other int, sample []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.access, l.warn, l.other, append([]string(nil), l.sample...)
}

// rapidResetServer is a replica's real handler and HTTP server, with the
// Valkey rate limiter and revocation cache, on 127.0.0.1.
type rapidResetServer struct {
	addr           string
	token          string
	lim            *countedLimiter
	logs           *logLines
	entered, ended atomic.Int64 // requests that reached the handler, and finished
}

func newRapidResetServer(tb testing.TB, limits Limits) *rapidResetServer {
	tb.Helper()
	s := &rapidResetServer{logs: &logLines{}}
	log := slog.New(slog.NewTextHandler(s.logs, nil))
	a := newTestAPI(tb, apiOptions{
		handler: Options{Logger: log, Limits: limits, MaxRequestBytes: 1 << 20},
		serve: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				s.entered.Add(1)
				defer s.ended.Add(1)
				h.ServeHTTP(w, r)
			})
		},
	})
	s.addr, s.token, s.lim = strings.TrimPrefix(a.url, "http://"), a.user(tb).token, a.limiter
	return s
}

// rapidReset is what one connection's rapid reset did.
type rapidReset struct {
	sent   int  // pairs written before the server closed the connection, if it did
	goAway bool // the server sent GOAWAY
}

// rapidReset opens one h2c connection, sends n HEADERS frames of authorised
// GetProfile calls, each followed at once by RST_STREAM(CANCEL), and waits
// until the server has read them all (a PING's answer) and every handler
// it started has returned.
func (s *rapidResetServer) rapidReset(tb testing.TB, n int) rapidReset {
	tb.Helper()
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	bw := bufio.NewWriterSize(conn, 64<<10)
	fr := http2.NewFramer(bw, conn)
	var (
		mu     sync.Mutex // the framer's writes and bw
		res    rapidReset
		pinged = make(chan struct{})
		closed = make(chan struct{})
	)
	write := func(f func() error) error {
		mu.Lock()
		defer mu.Unlock()
		if err := f(); err != nil {
			return err
		}
		return bw.Flush()
	}
	go func() {
		defer close(closed)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = write(fr.WriteSettingsAck)
				}
			case *http2.PingFrame:
				if f.IsAck() {
					close(pinged)
				}
			case *http2.GoAwayFrame:
				mu.Lock()
				res.goAway = true
				mu.Unlock()
			}
		}
	}()
	if err := write(func() error {
		if _, err := bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		return fr.WriteSettings()
	}); err != nil {
		tb.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	headers := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: s.addr},
		{Name: ":path", Value: parleyv1connect.UserServiceGetProfileProcedure},
		{Name: "content-type", Value: "application/proto"},
		{Name: "authorization", Value: "Bearer " + s.token},
	}
	const batch = 64 // pairs per flush, as an attacker's buffered writes
	sent := 0
	for sent < n {
		err := write(func() error {
			for i := 0; i < batch && sent < n; i++ {
				id := uint32(2*sent + 1)
				block.Reset()
				for _, h := range headers {
					if err := enc.WriteField(h); err != nil {
						return err
					}
				}
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
					return err
				}
				if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
					return err
				}
				sent++
			}
			return nil
		})
		if err != nil {
			break // the server closed the connection
		}
	}
	if err := write(func() error { return fr.WritePing(false, [8]byte{1}) }); err == nil {
		select {
		case <-pinged:
		case <-closed:
		case <-time.After(time.Minute):
			tb.Fatal("no answer to the PING after the rapid reset")
		}
	}
	deadline := time.Now().Add(time.Minute)
	for s.ended.Load() != s.entered.Load() {
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d handlers still running a minute after the rapid reset", s.entered.Load()-s.ended.Load(), s.entered.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	res.sent = sent
	return res
}

// TestRapidResetCountsEveryRequest sends the probe's 20,000 HEADERS+
// RST_STREAM pairs over one h2c connection. Each reset request is counted
// against the rate limit like any other (by the local limiter when Valkey's
// answer comes too late for it), so all but the budget's worth are refused,
// and the log does not grow by a line per stream.
func TestRapidResetCountsEveryRequest(t *testing.T) {
	const perMinute = 100
	s := newRapidResetServer(t, Limits{IPPerMinute: perMinute, UserPerMinute: perMinute, AgentPerMinute: perMinute})
	res := s.rapidReset(t, rapidResetPairs)
	entered := s.entered.Load()
	calls, failed, allowed, refused := s.lim.calls.Load(), s.lim.failed.Load(), s.lim.allowed.Load(), s.lim.refused.Load()
	access, warn, other, sample := s.logs.counts()
	t.Logf("sent %d pairs (GOAWAY %v); %d requests reached the handler; limiter: %d calls, %d failed, %d allowed, %d refused; log: %d access lines, %d warnings, %d others",
		res.sent, res.goAway, entered, calls, failed, allowed, refused, access, warn, other)
	for _, line := range sample {
		t.Log(line)
	}
	if res.sent != rapidResetPairs {
		t.Errorf("the server closed the connection after %d pairs", res.sent)
	}
	if entered == 0 {
		t.Fatal("no request reached the handler")
	}
	if calls != entered || failed != 0 || allowed+refused != entered {
		t.Errorf("%d requests reached the handler, the limiter decided %d of them (%d calls, %d failed): every request must be counted",
			entered, allowed+refused, calls, failed)
	}
	// Valkey's budget and, for the requests it answered too late, the local
	// limiter's: each at most the burst, and a little refill.
	if allowed > 2*perMinute+20 {
		t.Errorf("%d reset requests allowed, want at most about %d", allowed, 2*perMinute)
	}
	// Each dependency's outage log writes at most a failure and a recovery
	// line per interval, so a busy machine whose Valkey times out now and
	// then adds a line or two; one line per stream would be thousands.
	if warn+other > 10 {
		t.Errorf("the rapid reset logged %d lines besides the access log, want at most 10: %q", warn+other, sample)
	}
}

// BenchmarkRapidReset measures what a rapid reset of rapidResetPairs
// streams over one connection costs the process (the server and this
// client's framing): CPU per pair, and the log lines it causes.
func BenchmarkRapidReset(b *testing.B) {
	s := newRapidResetServer(b, Limits{IPPerMinute: 100, UserPerMinute: 100, AgentPerMinute: 100})
	var before, after syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &before); err != nil {
		b.Fatal(err)
	}
	pairs := 0
	for b.Loop() {
		if res := s.rapidReset(b, rapidResetPairs); res.sent != rapidResetPairs {
			b.Fatalf("the server closed the connection after %d pairs", res.sent)
		}
		pairs += rapidResetPairs
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &after); err != nil {
		b.Fatal(err)
	}
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	access, warn, other, _ := s.logs.counts()
	ops := float64(pairs) / rapidResetPairs
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(pairs), "cpu-ns/pair")
	b.ReportMetric(float64(s.entered.Load())/ops, "handled/op")
	b.ReportMetric(float64(s.lim.refused.Load())/ops, "refused/op")
	b.ReportMetric(float64(warn+other)/ops, "log-lines/op")
	b.ReportMetric(float64(access)/ops, "access-lines/op")
	if errs := s.lim.failed.Load(); errs > 0 {
		b.ReportMetric(float64(errs)/ops, "uncounted/op")
	}
}
