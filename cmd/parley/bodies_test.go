package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

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
