package webhookhttp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/parley-dev/parley/internal/webhook"
)

var loopbackOnly = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

// onlyLoopback is the tests' last check of every socket address: whatever
// the Policy decided, nothing but 127.0.0.1 is connected to, so a broken
// Policy fails a test instead of sending a packet elsewhere.
func onlyLoopback(t *testing.T) func(network, address string) error {
	return func(network, address string) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || ap.Addr().Unmap() != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("the Policy let %s %s through", network, address)
			return errors.New("test: only 127.0.0.1 may be dialled")
		}
		return nil
	}
}

// counted is a receiver that counts the requests it gets.
type counted struct {
	*httptest.Server
	hits atomic.Int32
}

func newCounted(t *testing.T, h http.HandlerFunc) *counted {
	c := &counted{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(c.Close)
	return c
}

func noContent(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }

func delivery(url string) webhook.Attempt {
	return webhook.Attempt{URL: url, ID: "msg_test", Timestamp: time.Now(), Body: []byte(`{"type":"call.ended"}`), Secrets: []webhook.Secret{webhook.NewSecret()}}
}

func send(t *testing.T, p Policy, o clientOptions, d webhook.Attempt) (webhook.Response, error) {
	t.Helper()
	if o.control == nil {
		o.control = onlyLoopback(t)
	}
	return NewSender(newClient(p, 2*time.Second, o)).Send(t.Context(), d)
}

func TestLoopbackIsRefused(t *testing.T) {
	t.Parallel()
	srv := newCounted(t, noContent)
	for _, url := range []string{srv.URL, strings.Replace(srv.URL, "127.0.0.1", "[::ffff:127.0.0.1]", 1)} {
		_, err := send(t, Policy{AllowHTTP: true}, clientOptions{}, delivery(url))
		if !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("Send(%s) = %v, want ErrForbiddenAddress", url, err)
		}
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("the receiver got %d requests, want 0", n)
	}
}

func TestAllowedNetworkLetsLoopbackThrough(t *testing.T) {
	t.Parallel()
	srv := newCounted(t, noContent)
	res, err := send(t, Policy{AllowHTTP: true, Allowed: loopbackOnly}, clientOptions{}, delivery(srv.URL))
	if err != nil || res.Status != http.StatusNoContent || !res.OK() {
		t.Fatalf("Send = %+v, %v; want 204", res, err)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("the receiver got %d requests, want 1", n)
	}
}

// Private and link-local addresses are never dialled here: the Policy
// refuses them before connect, and onlyLoopback would refuse them after it.
func TestPrivateAndLinkLocalAreRefused(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"http://10.0.0.1/hook", "http://192.168.1.10:8080/", "http://172.20.0.5/",
		"http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://[fd00::1]/",
		"http://100.64.0.1/", "http://[::ffff:169.254.169.254]/", "http://0.0.0.0/",
	} {
		_, err := send(t, Policy{AllowHTTP: true, Allowed: loopbackOnly}, clientOptions{}, delivery(url))
		if !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("Send(%s) = %v, want ErrForbiddenAddress", url, err)
		}
	}
}

func TestOnlyHTTPSByDefault(t *testing.T) {
	t.Parallel()
	srv := newCounted(t, noContent)
	_, err := send(t, Policy{Allowed: loopbackOnly}, clientOptions{}, delivery(srv.URL))
	if !errors.Is(err, ErrForbiddenScheme) {
		t.Fatalf("Send(http) = %v, want ErrForbiddenScheme", err)
	}
	for _, url := range []string{"ftp://127.0.0.1/", "file:///etc/passwd"} {
		if _, err := send(t, Policy{AllowHTTP: true, Allowed: loopbackOnly}, clientOptions{}, delivery(url)); !errors.Is(err, ErrForbiddenScheme) {
			t.Errorf("Send(%s) = %v, want ErrForbiddenScheme", url, err)
		}
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("the receiver got %d requests, want 0", n)
	}

	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(noContent))
	t.Cleanup(tlsSrv.Close)
	o := clientOptions{rootCAs: tlsSrv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	res, err := send(t, Policy{Allowed: loopbackOnly}, o, delivery(tlsSrv.URL))
	if err != nil || res.Status != http.StatusNoContent {
		t.Fatalf("Send(https) = %+v, %v; want 204", res, err)
	}
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	// A second receiver the Policy would allow: not followed either.
	other := newCounted(t, noContent)
	for _, to := range []string{"http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", other.URL + "/moved"} {
		srv := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, to, http.StatusTemporaryRedirect)
		})
		res, err := send(t, Policy{AllowHTTP: true, Allowed: loopbackOnly}, clientOptions{}, delivery(srv.URL))
		if err != nil || res.Status != http.StatusTemporaryRedirect || res.OK() {
			t.Errorf("Send redirected to %s = %+v, %v; want the 307 itself, not OK", to, res, err)
		}
	}
	if n := other.hits.Load(); n != 0 {
		t.Fatalf("the redirect's target got %d requests, want 0", n)
	}
}

func TestTimeoutAndBoundedAnswer(t *testing.T) {
	t.Parallel()
	slow := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		// Once the body is read the server notices the client leaving.
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	client := newClient(Policy{AllowHTTP: true, Allowed: loopbackOnly}, 300*time.Millisecond, clientOptions{control: onlyLoopback(t)})
	start := time.Now()
	if _, err := NewSender(client).Send(t.Context(), delivery(slow.URL)); err == nil {
		t.Fatal("Send to a receiver that never answers succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Send took %v with a 300ms timeout", d)
	}

	big := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte(strings.Repeat("x", 1<<20)))
	})
	res, err := send(t, Policy{AllowHTTP: true, Allowed: loopbackOnly}, clientOptions{}, delivery(big.URL))
	if err != nil || res.Status != http.StatusInternalServerError || len(res.Body) != maxResponseBody {
		t.Fatalf("Send = status %d, %d bytes, %v; want 500 with %d bytes", res.Status, len(res.Body), err, maxResponseBody)
	}
}

// fakeDNS answers A queries for every name with the next of its answers
// (the last one repeated) and AAAA queries with none, over the connections
// a net.Resolver's Dial hands it: no DNS server is asked.
type fakeDNS struct {
	mu      sync.Mutex
	answers [][4]byte
	queries int
}

func (f *fakeDNS) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		client, server := net.Pipe()
		go f.serve(server)
		return client, nil
	}}
}

func (f *fakeDNS) aQueries() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.queries
}

// serve speaks DNS over TCP framing (a two-byte length before each
// message), which the resolver uses on a conn that is no PacketConn.
func (f *fakeDNS) serve(c net.Conn) {
	defer c.Close()
	for {
		var n [2]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		out, err := f.answer(msg)
		if err != nil {
			return
		}
		binary.BigEndian.PutUint16(n[:], uint16(len(out)))
		if _, err := c.Write(append(n[:], out...)); err != nil {
			return
		}
	}
}

func (f *fakeDNS) answer(msg []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionAvailable: true})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if q.Type == dnsmessage.TypeA {
		f.mu.Lock()
		a := f.answers[min(f.queries, len(f.answers)-1)]
		f.queries++
		f.mu.Unlock()
		rh := dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 0}
		if err := b.AResource(rh, dnsmessage.AResource{A: a}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// A name that resolves to a public address when checked and to loopback
// when the delivery connects reaches nothing: the dialer checks the
// address it connects to, not the one seen before.
func TestDNSAnswerChangingBetweenCheckAndConnect(t *testing.T) {
	t.Parallel()
	srv := newCounted(t, noContent)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	dns := &fakeDNS{answers: [][4]byte{{8, 8, 8, 8}, {127, 0, 0, 1}}}
	p := Policy{AllowHTTP: true}
	if err := p.CheckHost(t.Context(), dns.resolver(), "rebind.parley.test"); err != nil {
		t.Fatalf("CheckHost while the name is public: %v", err)
	}
	_, err := send(t, p, clientOptions{resolver: dns.resolver()}, delivery(fmt.Sprintf("http://rebind.parley.test:%d/", port)))
	if !errors.Is(err, ErrForbiddenAddress) || !strings.Contains(err.Error(), "127.0.0.1 is loopback") {
		t.Fatalf("Send after the name moved to 127.0.0.1 = %v, want ErrForbiddenAddress for 127.0.0.1", err)
	}
	if n := dns.aQueries(); n != 2 {
		t.Fatalf("the name was resolved %d times, want 2 (check, then connect)", n)
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("the receiver got %d requests, want 0", n)
	}
	// CheckHost itself refuses the name now.
	if err := p.CheckHost(t.Context(), dns.resolver(), "rebind.parley.test"); !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("CheckHost once the name is loopback = %v, want ErrForbiddenAddress", err)
	}
}

// The same resolver with 127.0.0.1 allowed delivers, so the test above
// failed for the address and not for the fake DNS.
func TestResolvedNameInAllowedNetwork(t *testing.T) {
	t.Parallel()
	srv := newCounted(t, noContent)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	dns := &fakeDNS{answers: [][4]byte{{127, 0, 0, 1}}}
	res, err := send(t, Policy{AllowHTTP: true, Allowed: loopbackOnly}, clientOptions{resolver: dns.resolver()}, delivery(fmt.Sprintf("http://hook.parley.test:%d/", port)))
	if err != nil || res.Status != http.StatusNoContent {
		t.Fatalf("Send = %+v, %v; want 204", res, err)
	}
	if n := srv.hits.Load(); n != 1 || dns.aQueries() != 1 {
		t.Fatalf("receiver hits %d, A queries %d; want 1 and 1", n, dns.aQueries())
	}
}
