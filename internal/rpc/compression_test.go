package rpc

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// gzipBomb returns about size bytes of gzip that inflate a thousandfold:
// copies of one member of 1 MiB of zeros (gzip readers read every member).
func gzipBomb(tb testing.TB, size int) []byte {
	tb.Helper()
	var member bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
	if _, err := zw.Write(make([]byte, 1<<20)); err != nil || zw.Close() != nil {
		tb.Fatal(err)
	}
	return bytes.Repeat(member.Bytes(), max(1, size/member.Len()))
}

func gzipOf(tb testing.TB, n int) []byte {
	tb.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(bytes.Repeat([]byte{'a'}, n)); err != nil || zw.Close() != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

func TestInflationStopsPastTheLimit(t *testing.T) {
	const limit = 1 << 20
	in := newInflation(limit, prometheus.NewRegistry())
	d := in.newDecompressor()

	// A message of exactly the limit inflates whole.
	if err := d.Reset(bytes.NewReader(gzipOf(t, limit))); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(d)
	if err != nil || len(got) != limit {
		t.Fatalf("a message of the limit: %d bytes, %v", len(got), err)
	}

	// A bomb stops one byte past it, however it is read.
	before := counterValue(in.inflated)
	if err := d.Reset(bytes.NewReader(gzipBomb(t, 1<<20))); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, d)
	if n != limit+1 || connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("a bomb: %d bytes, %v; want %d and resource_exhausted", n, err, limit+1)
	}
	if _, err := d.Read(make([]byte, 1)); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("read after the limit: %v", err)
	}
	if got := counterValue(in.inflated) - before; got != limit+1 {
		t.Fatalf("counted %v inflated bytes, want %d", got, limit+1)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// bombRequest is a request of each protocol whose one message is bomb,
// gzip-compressed, to Register (REST: CreateConversation, unauthenticated).
func bombRequest(protocol string, bomb []byte) *http.Request {
	path, ctype, header := "/parley.v1.AuthService/Register", "application/proto", "Content-Encoding"
	body := bomb
	switch protocol {
	case "grpc", "grpc-web":
		ctype, header = "application/"+protocol+"+proto", "Grpc-Encoding"
		body = binary.BigEndian.AppendUint32([]byte{1}, uint32(len(bomb)))
		body = append(body, bomb...)
	case "rest":
		path, ctype = "/api/v1/conversations", "application/json"
	}
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	r.Header.Set("Content-Type", ctype)
	r.Header.Set(header, "gzip")
	if protocol == "grpc" {
		r.ProtoMajor, r.ProtoMinor, r.Proto = 2, 0, "HTTP/2.0"
		r.Header.Set("Te", "trailers")
	}
	return r
}

// countingBody counts the bytes a handler reads of a request body.
type countingBody struct {
	io.Reader
	n int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.Reader.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingBody) Close() error { return nil }

// BenchmarkGzipBomb is the CPU a refused 15 MB gzip bomb (15 GiB of zeros)
// costs, sent to Register under the default 16 MiB limit. The services are
// unimplemented: the bomb is refused while the request is decoded, before
// any service runs. inflated-B/op is what the decompressor produced,
// body-B/op what was read of the request.
func BenchmarkGzipBomb(b *testing.B) {
	bomb := gzipBomb(b, 15_000_000)
	for _, protocol := range []string{"connect", "grpc", "grpc-web", "rest"} {
		b.Run(protocol, func(b *testing.B) {
			reg := prometheus.NewRegistry()
			h, err := NewHandler(Services{}, Options{
				Logger:          slog.New(slog.DiscardHandler),
				Registry:        reg,
				MaxRequestBytes: 16 << 20,
				Probe:           NewProbe(),
			})
			if err != nil {
				b.Fatal(err)
			}
			inflated := func() float64 {
				mfs, _ := reg.Gather()
				for _, mf := range mfs {
					if mf.GetName() == "parley_request_inflated_bytes_total" {
						return mf.GetMetric()[0].GetCounter().GetValue()
					}
				}
				b.Fatal("no parley_request_inflated_bytes_total")
				return 0
			}
			var read int64
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				r := bombRequest(protocol, bomb)
				body := &countingBody{Reader: r.Body}
				r.Body = body
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				read += body.n
				if code := answerCode(w); code != connect.CodeResourceExhausted {
					b.Fatalf("answer %v (%d %s %v), want resource_exhausted", code, w.Code, w.Body.Bytes(), w.Header())
				}
			}
			b.StopTimer()
			b.ReportMetric(inflated()/float64(b.N), "inflated-B/op")
			b.ReportMetric(float64(read)/float64(b.N), "body-B/op")
		})
	}
}

// answerCode reads the Connect code of a recorded error answer in any of
// the protocols.
func answerCode(w *httptest.ResponseRecorder) connect.Code {
	status := w.Result().Trailer.Get("Grpc-Status")
	if status == "" {
		status = w.Header().Get("Grpc-Status")
	}
	body := w.Body.Bytes()
	if i := bytes.Index(body, []byte("grpc-status:")); status == "" && i >= 0 {
		status = string(bytes.TrimSpace(bytes.SplitN(body[i+len("grpc-status:"):], []byte("\r\n"), 2)[0]))
	}
	if status != "" {
		n, _ := strconv.Atoi(status)
		return connect.Code(n)
	}
	if bytes.Contains(body, []byte(`"code":"resource_exhausted"`)) || bytes.Contains(body, []byte(`"code":8`)) {
		return connect.CodeResourceExhausted
	}
	return connect.CodeUnknown
}

// TestGzipBodiesWithinTheLimit: bounding inflation leaves gzip requests
// that stay within the limit working, over every protocol and REST.
func TestGzipBodiesWithinTheLimit(t *testing.T) {
	t.Parallel()
	base := newRESTServer(t, Limits{UserPerMinute: 1000, AgentPerMinute: 1000, IPPerMinute: 1000})
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(h2c.CloseIdleConnections)
	for name, opts := range map[string][]connect.ClientOption{
		"connect":  {connect.WithSendGzip()},
		"grpc":     {connect.WithSendGzip(), connect.WithGRPC()},
		"grpc-web": {connect.WithSendGzip(), connect.WithGRPCWeb()},
	} {
		auth := parleyv1connect.NewAuthServiceClient(&http.Client{Transport: h2c}, base, opts...)
		if _, err := auth.Register(t.Context(), connect.NewRequest(&parleyv1.RegisterRequest{
			Email: name + "@example.com", Password: "correct horse battery", DisplayName: strings.Repeat("G", 100),
		})); err != nil {
			t.Errorf("%s: gzip Register: %v", name, err)
		}
	}

	tok := register(t, base)
	post := func(body []byte) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/api/v1/conversations", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Content-Encoding", "gzip")
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(`{"title":"compressed"}`))
	_ = zw.Close()
	if status, out := post(gz.Bytes()); status != http.StatusOK || out["conversation"].(map[string]any)["title"] != "compressed" {
		t.Errorf("REST gzip body: %d %v", status, out)
	}
	status, out := post([]byte("not gzip at all"))
	wantError(t, "REST body that is not gzip", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
	corrupt := bytes.Clone(gz.Bytes())
	corrupt[len(corrupt)-5] ^= 0xff // the CRC-32
	status, out = post(corrupt)
	wantError(t, "REST gzip body with a bad checksum", status, out, http.StatusBadRequest, connect.CodeInvalidArgument)
	status, out = post(gzipBomb(t, 100_000))
	wantError(t, "REST bomb", status, out, http.StatusTooManyRequests, connect.CodeResourceExhausted)
}
