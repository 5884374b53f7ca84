package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/token"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// server is a Parley started in-process through run, as `parley serve`.
type server struct {
	base   string
	env    map[string]string
	stderr *syncBuffer
	cancel context.CancelFunc
	done   chan int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The LiveKit key and secret the tests configure.
const (
	testLiveKitKey    = "APIparleytest"
	testLiveKitSecret = "a-test-secret-of-at-least-thirty-two-characters"
)

// baseEnv is a complete configuration over the test's private services.
func baseEnv(t *testing.T, dbURL string) map[string]string {
	t.Helper()
	keys := filepath.Join(t.TempDir(), "jwks.json")
	set, err := token.GenerateKeySet()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keys, set, 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"DATABASE_URL":    dbURL,
		"VALKEY_URL":      testenv.ValkeyURL(t),
		"PARLEY_JWT_KEYS": keys,
		// serve has no LiveKit keys of its own: LiveKit's development
		// keys are public. Nothing listens on the default LIVEKIT_URL.
		"LIVEKIT_API_KEY":       testLiveKitKey,
		"LIVEKIT_API_SECRET":    testLiveKitSecret,
		"PARLEY_HTTP_ADDR":      fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"PARLEY_SHUTDOWN_DELAY": "0s",
		"PARLEY_DRAIN_TIMEOUT":  "5s",
		"PARLEY_BLOB_DIR":       filepath.Join(t.TempDir(), "blobs"),
		"PARLEY_LOG_LEVEL":      "warn",
		// High limits: tests of limits set their own.
		"PARLEY_RATE_LIMIT_IP_PER_MINUTE":   "100000",
		"PARLEY_RATE_LIMIT_USER_PER_MINUTE": "100000",
	}
}

func startServer(t *testing.T, env map[string]string) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{base: "http://" + env["PARLEY_HTTP_ADDR"], env: env, stderr: &syncBuffer{}, cancel: cancel, done: make(chan int, 1)}
	go func() {
		s.done <- run(ctx, []string{"serve"}, func(k string) string { return env[k] }, io.Discard, s.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			t.Errorf("server did not stop")
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case code := <-s.done:
			t.Fatalf("server exited with %d: %s", code, s.stderr.String())
		default:
		}
		resp, err := http.Get(s.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("server not ready in time: %s", s.stderr.String())
	return nil
}

// h2cClient speaks HTTP/2 without TLS, as gRPC needs.
func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

var protocols = []struct {
	name   string
	client func() *http.Client
	opts   []connect.ClientOption
}{
	{"connect-json", func() *http.Client { return http.DefaultClient }, []connect.ClientOption{connect.WithProtoJSON()}},
	{"connect-proto", func() *http.Client { return http.DefaultClient }, nil},
	{"grpc", h2cClient, []connect.ClientOption{connect.WithGRPC()}},
	{"grpc-web", func() *http.Client { return http.DefaultClient }, []connect.ClientOption{connect.WithGRPCWeb()}},
}

func bearer[T any](req *connect.Request[T], tok string) *connect.Request[T] {
	req.Header().Set("Authorization", "Bearer "+tok)
	return req
}

func TestSameRPCOverEveryProtocol(t *testing.T) {
	s := startServer(t, baseEnv(t, testenv.DatabaseURL(t)))
	ctx := context.Background()
	for i, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			auth := parleyv1connect.NewAuthServiceClient(p.client(), s.base, p.opts...)
			users := parleyv1connect.NewUserServiceClient(p.client(), s.base, p.opts...)
			email := fmt.Sprintf("Proto%d@Example.com", i)
			reg, err := auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: email, Password: "correct horse", DisplayName: "P"}))
			if err != nil {
				t.Fatal(err)
			}
			if got := reg.Msg.GetUser().GetEmail(); got != strings.ToLower(email) {
				t.Fatalf("email = %q, want lower-cased", got)
			}
			prof, err := users.GetProfile(ctx, bearer(connect.NewRequest(&parleyv1.GetProfileRequest{}), reg.Msg.GetTokens().GetAccessToken()))
			if err != nil {
				t.Fatal(err)
			}
			if prof.Msg.GetUser().GetId() != reg.Msg.GetUser().GetId() {
				t.Fatalf("profile %v is not the registered user %v", prof.Msg.GetUser(), reg.Msg.GetUser())
			}
			_, err = auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: email, Password: "correct horse"}))
			if connect.CodeOf(err) != connect.CodeAlreadyExists {
				t.Fatalf("duplicate email: %v, want already_exists", err)
			}
			_, err = auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: "x" + email, Password: "short"}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("short password: %v, want invalid_argument", err)
			}
		})
	}
}

func TestRefusedTokens(t *testing.T) {
	s := startServer(t, baseEnv(t, testenv.DatabaseURL(t)))
	users := parleyv1connect.NewUserServiceClient(http.DefaultClient, s.base)
	otherKeys, err := token.GenerateKeySet()
	if err != nil {
		t.Fatal(err)
	}
	set, err := token.ParseKeySet(otherKeys)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := token.NewManager(set, token.Options{Issuer: "parley", Audience: "parley"})
	if err != nil {
		t.Fatal(err)
	}
	forged, err := stranger.Issue([16]byte{1}, 1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"missing":            "",
		"garbage":            "Bearer not.a.jwt",
		"alg none":           "Bearer eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.eyJzdWIiOiIwMTAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAifQ.",
		"someone else's key": "Bearer " + forged.Token,
		"basic auth":         "Basic dXNlcjpwYXNz",
	}
	for name, header := range cases {
		t.Run(name, func(t *testing.T) {
			req := connect.NewRequest(&parleyv1.GetProfileRequest{})
			if header != "" {
				req.Header().Set("Authorization", header)
			}
			_, err := users.GetProfile(context.Background(), req)
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("got %v, want unauthenticated", err)
			}
		})
	}
}

func TestOperationalEndpoints(t *testing.T) {
	s := startServer(t, baseEnv(t, testenv.DatabaseURL(t)))
	get := func(path string) (int, string) {
		resp, err := http.Get(s.base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	code, body := get("/readyz")
	var ready struct {
		Status       string
		Dependencies map[string]string
	}
	if err := json.Unmarshal([]byte(body), &ready); err != nil || code != 200 || ready.Status != "ready" ||
		ready.Dependencies["postgres"] != "ok" || ready.Dependencies["valkey"] != "ok" {
		t.Errorf("/readyz = %d %s", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d", code)
	}
	code, body = get("/.well-known/jwks.json")
	if code != 200 || !strings.Contains(body, `"kty"`) || strings.Contains(body, `"d"`) {
		t.Errorf("jwks = %d %s", code, body)
	}

	conn, err := grpc.NewClient(strings.TrimPrefix(s.base, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: parleyv1connect.ConversationServiceName})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("grpc health: %v %v", hc, err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, svc := range resp.GetListServicesResponse().GetService() {
		listed[svc.GetName()] = true
	}
	for _, name := range serviceNamesForTest {
		if !listed[name] {
			t.Errorf("reflection does not list %s (got %v)", name, listed)
		}
	}
}

var serviceNamesForTest = []string{
	parleyv1connect.AuthServiceName, parleyv1connect.UserServiceName, parleyv1connect.RoomServiceName,
	parleyv1connect.ConversationServiceName, parleyv1connect.FileServiceName, parleyv1connect.CallServiceName,
	parleyv1connect.WebhookServiceName,
}

func TestRateLimitHeadersAndRefusal(t *testing.T) {
	env := baseEnv(t, testenv.DatabaseURL(t))
	env["PARLEY_RATE_LIMIT_IP_PER_MINUTE"] = "5"
	env["VALKEY_URL"] = testenv.NewValkey(t).URL()
	s := startServer(t, env)
	var last *http.Response
	for i := 0; i < 6; i++ {
		resp, err := http.Post(s.base+"/parley.v1.AuthService/Login", "application/json", strings.NewReader(`{"email":"a@b.co","password":"whatever1"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("RateLimit-Policy") == "" || resp.Header.Get("RateLimit") == "" {
			t.Fatalf("request %d lacks RateLimit headers: %v", i, resp.Header)
		}
		last = resp
	}
	if last.StatusCode != http.StatusTooManyRequests || last.Header.Get("Retry-After") == "" {
		t.Fatalf("6th request: %d, Retry-After %q; want 429 with Retry-After", last.StatusCode, last.Header.Get("Retry-After"))
	}
	auth := parleyv1connect.NewAuthServiceClient(http.DefaultClient, s.base)
	_, err := auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Email: "a@b.co", Password: "whatever1"}))
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeResourceExhausted || cerr.Meta().Get("Retry-After") == "" {
		t.Fatalf("Connect client: %v, want resource_exhausted with Retry-After", err)
	}
}

func TestConfigErrorExitsWithTwo(t *testing.T) {
	var stderr bytes.Buffer
	env := map[string]string{"PARLEY_JWT_KEYS": "/nowhere"}
	code := run(context.Background(), []string{"serve"}, func(k string) string { return env[k] }, io.Discard, &stderr)
	if code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	if got := strings.TrimSpace(stderr.String()); got != "parley: config: DATABASE_URL: required but not set" {
		t.Fatalf("stderr %q", got)
	}
	stderr.Reset()
	env = map[string]string{"DATABASE_URL": "postgres://x", "PARLEY_JWT_KEYS": "/k", "PARLEY_ACCESS_TOKEN_TTL": "forever"}
	if code := run(context.Background(), nil, func(k string) string { return env[k] }, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "PARLEY_ACCESS_TOKEN_TTL") || strings.Count(stderr.String(), "\n") != 1 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

func TestServeHelpListsEnvironment(t *testing.T) {
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"serve", "--help"}, func(string) string { return "" }, io.Discard, &stderr)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, v := range []string{"DATABASE_URL", "VALKEY_URL", "PARLEY_JWT_KEYS", "PARLEY_RATE_LIMIT_IP_PER_MINUTE", "(required)", "30m"} {
		if !strings.Contains(stderr.String(), v) {
			t.Errorf("help lacks %s", v)
		}
	}
}

func TestKeysGenerate(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"keys", "generate"}, func(string) string { return "" }, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := token.ParseKeySet(out.Bytes()); err != nil {
		t.Fatalf("printed set does not parse: %v\n%s", err, out.String())
	}
}
