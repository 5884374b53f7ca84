package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
)

// bombWriter is a gzip "compressor" that sends bomb whatever the message.
type bombWriter struct {
	bomb []byte
	w    io.Writer
}

func (b *bombWriter) Write(p []byte) (int, error) { return len(p), nil }
func (b *bombWriter) Close() error                { _, err := b.w.Write(b.bomb); return err }
func (b *bombWriter) Reset(w io.Writer)           { b.w = w }

// TestGzipBombRefused sends 15 MB of gzip that inflate to 15 GiB of zeros to
// Register (unauthenticated) over Connect, gRPC and gRPC-Web, and to a REST
// path without a token. Each is refused with resource_exhausted once the
// inflated bytes pass PARLEY_MAX_REQUEST_BYTES (16 MiB), as the server's
// inflated-bytes counter and its CPU time show.
func TestGzipBombRefused(t *testing.T) {
	bin := buildBinary(t)
	env := baseEnv(t, testenv.DatabaseURL(t))
	ops := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	env["PARLEY_OPS_ADDR"] = ops
	r := startReplica(t, bin, env)
	r.waitReady(t, 60*time.Second)
	const limit = 16 << 20

	var member bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
	if _, err := zw.Write(make([]byte, 1<<20)); err != nil || zw.Close() != nil {
		t.Fatal(err)
	}
	// Gzip readers read every member of a stream: 15 MB of copies of one.
	bomb := bytes.Repeat(member.Bytes(), 15_000_000/member.Len())

	inflated := func() int64 {
		t.Helper()
		resp, err := http.Get("http://" + ops + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "parley_request_inflated_bytes_total "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatal(err)
				}
				return int64(f)
			}
		}
		t.Fatal("no parley_request_inflated_bytes_total in /metrics")
		return 0
	}
	sends := map[string]func() error{
		"rest": func() error {
			req, err := http.NewRequest(http.MethodPost, r.base+"/api/v1/conversations", bytes.NewReader(bomb))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Content-Encoding", "gzip")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var out struct{ Code int }
			if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusTooManyRequests {
				return fmt.Errorf("REST answered %d (%v)", resp.StatusCode, err)
			}
			return connect.NewError(connect.Code(out.Code), nil)
		},
	}
	for _, p := range protocols {
		opts := append([]connect.ClientOption{
			connect.WithAcceptCompression("gzip", func() connect.Decompressor { return &gzip.Reader{} },
				func() connect.Compressor { return &bombWriter{bomb: bomb} }),
			connect.WithSendCompression("gzip"),
		}, p.opts...)
		auth := parleyv1connect.NewAuthServiceClient(p.client(), r.base, opts...)
		sends[p.name] = func() error {
			_, err := auth.Register(t.Context(), connect.NewRequest(&parleyv1.RegisterRequest{Email: "bomb@example.com", Password: "correct horse"}))
			return err
		}
	}

	cpuBefore := processCPU(t, r.cmd.Process.Pid)
	for name, send := range sends {
		before := inflated()
		err := send()
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Errorf("%s: %v, want resource_exhausted", name, err)
		}
		if n := inflated() - before; n <= 0 || n > limit+1 {
			t.Errorf("%s: the server inflated %d bytes, want at most the limit and one byte (%d)", name, n, limit+1)
		}
	}
	// Inflating 15 GiB took seconds of CPU per bomb; 16 MiB takes a few
	// milliseconds, and reading 15 MB into buffers a few tens more.
	if used := processCPU(t, r.cmd.Process.Pid) - cpuBefore; used > time.Duration(len(sends))*2*time.Second {
		t.Errorf("the server spent %v of CPU on %d bombs", used, len(sends))
	}
}

// processCPU is the user and system CPU time process pid has used.
func processCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name in parentheses may hold spaces; fields follow it.
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, raw)
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// TestSlowBodies: with PARLEY_BODY_TIMEOUT 1s and PARLEY_BODY_MIN_RATE
// 1000 B/s, a body that stalls or trickles below the rate loses its
// connection (HTTP/1.1) or its stream (HTTP/2, the connection serving on), a
// body above the rate arrives however long it takes, and a WatchMessages
// stream, whose request is one small message, outlives the timeout.
func TestSlowBodies(t *testing.T) {
	const timeout = time.Second
	env := baseEnv(t, testenv.DatabaseURL(t))
	env["PARLEY_BODY_TIMEOUT"] = timeout.String()
	env["PARLEY_BODY_MIN_RATE"] = "1000"
	env["PARLEY_PUBLIC_URL"] = "http://" + env["PARLEY_HTTP_ADDR"]
	s := startServer(t, env)
	addr := env["PARLEY_HTTP_ADDR"]
	tok := registerUser(t, s.base)
	convs := parleyv1connect.NewConversationServiceClient(http.DefaultClient, s.base)
	conv, err := convs.CreateConversation(t.Context(), bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "slow"}), tok))
	if err != nil {
		t.Fatal(err)
	}
	convID := conv.Msg.GetConversation().GetId()

	// cutAfter checks the server closes the connection after about the
	// timeout, and returns the status it answered with.
	cutAfter := func(t *testing.T, closed time.Duration, answer string) int {
		t.Helper()
		if closed < timeout-50*time.Millisecond || closed > timeout+3*time.Second {
			t.Errorf("connection closed %v after the headers, want about %v", closed.Round(time.Millisecond), timeout)
		}
		m := regexp.MustCompile(`^HTTP/1\.1 (\d+)`).FindStringSubmatch(answer)
		if m == nil {
			t.Fatalf("answer %q", answer)
		}
		status, _ := strconv.Atoi(m[1])
		return status
	}

	t.Run("stalled HTTP/1.1 body", func(t *testing.T) {
		t.Parallel()
		closed, answer := rawRequest(t, addr, "POST /parley.v1.AuthService/Register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n", nil)
		if status := cutAfter(t, closed, answer); status < 400 {
			t.Errorf("answered %d", status)
		}
	})
	t.Run("trickled HTTP/1.1 body", func(t *testing.T) {
		t.Parallel()
		closed, answer := rawRequest(t, addr, "POST /parley.v1.AuthService/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n",
			trickle(bytes.Repeat([]byte(" "), 50), 1, 100*time.Millisecond)) // 10 B/s
		if status := cutAfter(t, closed, answer); status < 400 {
			t.Errorf("answered %d", status)
		}
	})
	// Bidirectional streams need HTTP/2: over HTTP/1.1 reflection's body
	// is bounded like any other.
	t.Run("stalled HTTP/1.1 body to reflection", func(t *testing.T) {
		t.Parallel()
		closed, answer := rawRequest(t, addr, "POST /grpc.reflection.v1.ServerReflection/ServerReflectionInfo HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+proto\r\nContent-Length: 50\r\n\r\n", nil)
		if status := cutAfter(t, closed, answer); status != http.StatusHTTPVersionNotSupported {
			t.Errorf("answered %d, want 505", status)
		}
	})
	t.Run("upload PUT below the rate", func(t *testing.T) {
		t.Parallel()
		up := createUpload(t, s.base, tok, convID, 8000)
		u := strings.TrimPrefix(up.GetUploadUrl(), s.base)
		head := fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 8000\r\n\r\n", u)
		closed, answer := rawRequest(t, addr, head, trickle(bytes.Repeat([]byte("a"), 8000), 20, 200*time.Millisecond)) // 100 B/s
		if status := cutAfter(t, closed, answer); status != http.StatusRequestTimeout {
			t.Errorf("answered %d, want 408", status)
		}
	})
	t.Run("upload PUT above the rate", func(t *testing.T) {
		t.Parallel()
		data := bytes.Repeat([]byte("slow but steady\n"), 500) // 8000 bytes, 4s at 2000 B/s
		up := createUpload(t, s.base, tok, convID, len(data))
		req, err := http.NewRequest(http.MethodPut, up.GetUploadUrl(), trickleReader(data, 200, 100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = int64(len(data))
		for k, v := range up.GetUploadHeaders() {
			req.Header.Set(k, v)
		}
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT: %d", resp.StatusCode)
		}
		files := parleyv1connect.NewFileServiceClient(http.DefaultClient, s.base)
		if _, err := files.CompleteUpload(t.Context(), bearer(connect.NewRequest(&parleyv1.CompleteUploadRequest{FileId: up.GetFile().GetId()}), tok)); err != nil {
			t.Fatalf("CompleteUpload: %v", err)
		}
	})
	t.Run("UploadFile above the rate over h2c", func(t *testing.T) {
		t.Parallel()
		data := bytes.Repeat([]byte("x"), 6000) // 8 KB of JSON, 4s at 2000 B/s
		body, _ := json.Marshal(map[string]string{"conversationId": convID, "filename": "slow.txt", "data": base64.StdEncoding.EncodeToString(data)})
		req, err := http.NewRequest(http.MethodPost, s.base+"/parley.v1.FileService/UploadFile", trickleReader(body, 200, 100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := h2cClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		answer, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(answer), `"sizeBytes":"6000"`) {
			t.Fatalf("UploadFile: %d %s", resp.StatusCode, answer)
		}
	})
	t.Run("stalled h2c stream", func(t *testing.T) {
		t.Parallel()
		c := h2cClient()
		get := func() (reused bool) {
			t.Helper()
			req, _ := http.NewRequest(http.MethodGet, s.base+"/healthz", nil)
			req = req.WithContext(httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
				GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
			}))
			resp, err := c.Do(req)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("/healthz: %v %v", resp, err)
			}
			resp.Body.Close()
			return reused
		}
		get() // the connection the stalled stream will share

		pr, pw := io.Pipe()
		defer pw.Close()
		req, _ := http.NewRequest(http.MethodPost, s.base+"/parley.v1.AuthService/Login", pr)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		stalled := make(chan error, 1)
		go func() {
			resp, err := c.Do(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode < 400 {
					err = fmt.Errorf("answered %d", resp.StatusCode)
				}
			}
			stalled <- err
		}()
		time.Sleep(timeout / 2)
		if !get() {
			t.Error("a request beside the stalled stream did not share its connection")
		}
		select {
		case <-stalled:
		case <-time.After(timeout + 3*time.Second):
			t.Fatalf("the stalled stream still open %v later", time.Since(start).Round(time.Millisecond))
		}
		if d := time.Since(start); d < timeout-50*time.Millisecond {
			t.Errorf("the stalled stream ended after %v, before the timeout", d)
		}
		if !get() {
			t.Error("the connection did not survive its stalled stream")
		}
	})
	// Reflection is a bidirectional stream: its client sends requests over
	// the stream's life, so its body has no deadline.
	t.Run("reflection stream outlives the timeout", func(t *testing.T) {
		t.Parallel()
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if i > 0 {
				time.Sleep(timeout * 3 / 2)
			}
			if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatalf("reflection request %d: %v", i+1, err)
			}
		}
	})
	t.Run("WatchMessages outlives the timeout", func(t *testing.T) {
		t.Parallel()
		for _, p := range protocols {
			t.Run(p.name, func(t *testing.T) {
				t.Parallel()
				c := parleyv1connect.NewConversationServiceClient(p.client(), s.base, p.opts...)
				ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
				defer cancel()
				stream, err := c.WatchMessages(ctx, bearer(connect.NewRequest(&parleyv1.WatchMessagesRequest{ConversationId: convID}), tok))
				if err != nil {
					t.Fatal(err)
				}
				defer stream.Close()
				time.Sleep(timeout * 5 / 2)
				turn := "watch-" + p.name
				if _, err := c.SaveTurn(ctx, bearer(connect.NewRequest(&parleyv1.SaveTurnRequest{ConversationId: convID, TurnId: turn, UserMessage: turn}), tok)); err != nil {
					t.Fatal(err)
				}
				for stream.Receive() {
					if stream.Msg().GetMessage().GetTurnId() == turn {
						return
					}
				}
				t.Fatalf("stream ended before the turn saved %v after it opened: %v", timeout*5/2, stream.Err())
			})
		}
	})
}

// rawRequest writes head on a new connection, then runs send (if any) to
// write the body, and returns how long after the head the server closed the
// connection, and what it answered.
func rawRequest(t *testing.T, addr, head string, send func(io.Writer)) (time.Duration, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if send != nil {
		go send(conn)
	}
	_ = conn.SetReadDeadline(start.Add(15 * time.Second))
	answer, err := io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open 15s after the headers; read %q", answer)
	}
	return time.Since(start), string(answer)
}

// trickle writes data in pieces of n bytes, one every interval, until it is
// written or a write fails.
func trickle(data []byte, n int, every time.Duration) func(io.Writer) {
	return func(w io.Writer) {
		for len(data) > 0 {
			time.Sleep(every)
			k := min(n, len(data))
			if _, err := w.Write(data[:k]); err != nil {
				return
			}
			data = data[k:]
		}
	}
}

// trickleReader yields data as trickle writes it.
func trickleReader(data []byte, n int, every time.Duration) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		trickle(data, n, every)(pw)
		pw.Close()
	}()
	return pr
}

func registerUser(t *testing.T, base string) string {
	t.Helper()
	auth := parleyv1connect.NewAuthServiceClient(http.DefaultClient, base)
	reg, err := auth.Register(t.Context(), connect.NewRequest(&parleyv1.RegisterRequest{
		Email: strings.ToLower(strings.ReplaceAll(t.Name(), "/", ".")) + "@example.com", Password: "correct horse",
	}))
	if err != nil {
		t.Fatal(err)
	}
	return reg.Msg.GetTokens().GetAccessToken()
}

func createUpload(t *testing.T, base, tok, convID string, size int) *parleyv1.CreateUploadResponse {
	t.Helper()
	files := parleyv1connect.NewFileServiceClient(http.DefaultClient, base)
	up, err := files.CreateUpload(t.Context(), bearer(connect.NewRequest(&parleyv1.CreateUploadRequest{
		ConversationId: convID, Filename: "slow.txt", ContentType: "text/plain", SizeBytes: int64(size),
	}), tok))
	if err != nil {
		t.Fatal(err)
	}
	return up.Msg
}
