package main

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/rpc"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestSIGTERMDrain sends SIGTERM to a replica that holds idle connections
// and a WatchMessages stream, and to one with a call in flight.
func TestSIGTERMDrain(t *testing.T) {
	const delay = 500 * time.Millisecond
	bin := buildBinary(t)
	dbURL := testenv.DatabaseURL(t)
	start := func(t *testing.T) (*replica, string) {
		t.Helper()
		env := baseEnv(t, dbURL)
		env["PARLEY_SHUTDOWN_DELAY"] = delay.String()
		env["PARLEY_DRAIN_TIMEOUT"] = "10s"
		env["PARLEY_LOG_LEVEL"] = "info"
		r := startReplica(t, bin, env)
		r.waitReady(t, 60*time.Second)
		auth := parleyv1connect.NewAuthServiceClient(http.DefaultClient, r.base)
		reg, err := auth.Register(t.Context(), connect.NewRequest(&parleyv1.RegisterRequest{
			Email: strings.ToLower(strings.ReplaceAll(t.Name(), "/", ".")) + "@example.com", Password: "correct horse",
		}))
		if err != nil {
			t.Fatal(err)
		}
		return r, reg.Msg.GetTokens().GetAccessToken()
	}
	// stop sends SIGTERM and returns when it was sent and a channel that
	// gets the exit.
	stop := func(t *testing.T, r *replica) (time.Time, <-chan error) {
		t.Helper()
		exited := make(chan error, 1)
		sent := time.Now()
		if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		go func() { exited <- r.cmd.Wait() }()
		return sent, exited
	}
	waitExit := func(t *testing.T, r *replica, exited <-chan error) time.Time {
		t.Helper()
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("exit: %v\n%s", err, r.log.String())
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no exit 15s after SIGTERM:\n%s", r.log.String())
		}
		if !strings.Contains(r.log.String(), `"msg":"stopped"`) {
			t.Errorf("no clean stop in the log:\n%s", r.log.String())
		}
		return time.Now()
	}

	// Idle connections must not hold the exit: an idle h2c connection once
	// kept it a second past the delay (the HTTP/2 server closes a
	// connection a second after its GOAWAY), and a connection held until
	// the drain timeout would keep it ten.
	t.Run("idle connections and a stream", func(t *testing.T) {
		r, tok := start(t)
		ctx := t.Context()
		for name, c := range map[string]*http.Client{"HTTP/1.1": {Transport: &http.Transport{}}, "h2c": h2cClient()} {
			resp, err := c.Get(r.base + "/healthz")
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if want := map[string]int{"HTTP/1.1": 1, "h2c": 2}[name]; resp.ProtoMajor != want {
				t.Fatalf("%s connection speaks HTTP/%d", name, resp.ProtoMajor)
			}
		}
		convs := parleyv1connect.NewConversationServiceClient(h2cClient(), r.base, connect.WithGRPC())
		conv, err := convs.CreateConversation(ctx, bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "drain"}), tok))
		if err != nil {
			t.Fatal(err)
		}
		convID := conv.Msg.GetConversation().GetId()
		if _, err := convs.SaveTurn(ctx, bearer(connect.NewRequest(&parleyv1.SaveTurnRequest{ConversationId: convID, UserMessage: "hello"}), tok)); err != nil {
			t.Fatal(err)
		}
		stream, err := convs.WatchMessages(ctx, bearer(connect.NewRequest(&parleyv1.WatchMessagesRequest{ConversationId: convID}), tok))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		if !stream.Receive() { // past the backlog: the stream waits for news
			t.Fatalf("WatchMessages: %v", stream.Err())
		}

		sent, exited := stop(t, r)
		for stream.Receive() {
		}
		if connect.CodeOf(stream.Err()) != connect.CodeUnavailable {
			t.Errorf("WatchMessages ended with %v; want unavailable", stream.Err())
		}
		exit := waitExit(t, r, exited)
		// Shutdown polls its connections at growing intervals, so the exit
		// comes up to a few hundred milliseconds after the last one closed.
		if d := exit.Sub(sent); d > delay+700*time.Millisecond {
			t.Errorf("exited %v after SIGTERM; want within 700ms of the %v shutdown delay", d.Round(time.Millisecond), delay)
		}
	})

	// A call whose request is still arriving when Shutdown begins finishes,
	// on its h2c connection, before the process exits.
	t.Run("a call in flight", func(t *testing.T) {
		r, tok := start(t)
		pr, pw := io.Pipe()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.base+"/parley.v1.UserService/GetProfile", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tok)
		type answer struct {
			status int
			body   string
			err    error
		}
		inflight := make(chan answer, 1)
		go func() {
			resp, err := h2cClient().Do(req)
			if err != nil {
				inflight <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			inflight <- answer{status: resp.StatusCode, body: string(b), err: err}
		}()
		// Once the transport has taken the first byte, the server has the
		// request's headers: the call is in flight.
		if _, err := io.WriteString(pw, "{"); err != nil {
			t.Fatal(err)
		}

		sent, exited := stop(t, r)
		// Past the delay and the idle grace: Shutdown has begun and has
		// been closing idle connections.
		time.Sleep(time.Until(sent.Add(delay + 3*rpc.IdleGrace)))
		select {
		case err := <-exited:
			t.Fatalf("exited (%v) with a call in flight:\n%s", err, r.log.String())
		default:
		}
		if _, err := io.WriteString(pw, "}"); err != nil {
			t.Fatalf("the rest of the request: %v", err)
		}
		pw.Close()
		a := <-inflight
		if a.err != nil || a.status != http.StatusOK || !strings.Contains(a.body, `"user"`) {
			t.Fatalf("in-flight call: %d %q %v; want 200 with the profile", a.status, a.body, a.err)
		}
		answered := time.Now()
		if d := waitExit(t, r, exited).Sub(answered); d > 2*time.Second {
			t.Errorf("exited %v after the last call was answered", d.Round(time.Millisecond))
		}
	})
}
