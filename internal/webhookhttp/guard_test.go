package webhookhttp

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	loopbackAllowed := Policy{Allowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	tests := []struct {
		addr   string
		policy Policy
		why    string // empty: allowed
	}{
		{addr: "127.0.0.1", why: "loopback"},
		{addr: "127.255.0.9", why: "loopback"},
		{addr: "::1", why: "loopback"},
		{addr: "10.1.2.3", why: "private"},
		{addr: "172.16.0.1", why: "private"},
		{addr: "172.31.255.255", why: "private"},
		{addr: "192.168.1.1", why: "private"},
		{addr: "fc00::1", why: "unique local"},
		{addr: "fd12:3456::1", why: "unique local"},
		{addr: "169.254.169.254", why: "link-local"},
		{addr: "169.254.0.1", why: "link-local"},
		{addr: "fe80::1", why: "link-local"},
		{addr: "fe80::1%eth0", why: "link-local"},
		{addr: "100.64.0.1", why: "carrier-grade NAT"},
		{addr: "100.127.255.254", why: "carrier-grade NAT"},
		{addr: "0.0.0.0", why: "this network"},
		{addr: "::", why: "unspecified"},
		{addr: "224.0.0.1", why: "multicast"},
		{addr: "ff02::1", why: "multicast"},
		{addr: "255.255.255.255", why: "reserved"},
		{addr: "192.0.2.7", why: "documentation"},
		{addr: "2001:db8::1", why: "documentation"},
		{addr: "fec0::1", why: "site-local"},
		// The same addresses in IPv6 clothing.
		{addr: "::ffff:127.0.0.1", why: "loopback"},
		{addr: "::ffff:169.254.169.254", why: "link-local"},
		{addr: "::ffff:10.0.0.1", why: "private"},
		{addr: "::127.0.0.1", why: "IPv4-compatible"},
		{addr: "64:ff9b::a9fe:a9fe", why: "carries 169.254.169.254, which is link-local"},
		{addr: "2002:7f00:1::1", why: "carries 127.0.0.1, which is loopback"},
		{addr: "2001:0:4136:e378::1", why: "Teredo"},

		{addr: "8.8.8.8"},
		{addr: "1.1.1.1"},
		{addr: "172.32.0.1"},
		{addr: "100.128.0.1"},
		{addr: "2606:4700:4700::1111"},
		{addr: "::ffff:8.8.8.8"},
		{addr: "64:ff9b::808:808"},

		{addr: "127.0.0.1", policy: loopbackAllowed},
		{addr: "::ffff:127.0.0.1", policy: loopbackAllowed},
		{addr: "127.0.0.2", policy: loopbackAllowed, why: "loopback"},
		{addr: "::1", policy: loopbackAllowed, why: "loopback"},
		{addr: "10.0.0.1", policy: loopbackAllowed, why: "private"},
		{addr: "10.20.3.4", policy: Policy{Allowed: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}}},
	}
	for _, tt := range tests {
		err := tt.policy.check(netip.MustParseAddr(tt.addr))
		switch {
		case tt.why == "" && err != nil:
			t.Errorf("check(%s, allowed %v) = %v, want allowed", tt.addr, tt.policy.Allowed, err)
		case tt.why != "" && !errors.Is(err, ErrForbiddenAddress):
			t.Errorf("check(%s, allowed %v) = %v, want ErrForbiddenAddress (%s)", tt.addr, tt.policy.Allowed, err, tt.why)
		case tt.why != "" && !strings.Contains(err.Error(), tt.why):
			t.Errorf("check(%s) = %q, want the reason %q", tt.addr, err, tt.why)
		}
	}
}

func TestControlChecksTheSocketAddress(t *testing.T) {
	t.Parallel()
	var p Policy
	ctx := context.Background()
	for _, c := range []struct{ network, address string }{
		{"tcp4", "10.0.0.1:443"},
		{"tcp4", "169.254.169.254:80"},
		{"tcp6", "[fe80::1%eth0]:443"},
		{"tcp6", "[::ffff:127.0.0.1]:443"},
		{"udp4", "8.8.8.8:53"},
		{"tcp4", "not-an-address:443"},
	} {
		if err := p.control(ctx, c.network, c.address, nil); !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("control(%s, %s) = %v, want ErrForbiddenAddress", c.network, c.address, err)
		}
	}
	if err := p.control(ctx, "tcp4", "8.8.8.8:443", nil); err != nil {
		t.Errorf("control(tcp4, 8.8.8.8:443) = %v, want allowed", err)
	}
}

func TestCheckURL(t *testing.T) {
	t.Parallel()
	dns := &fakeDNS{answers: [][4]byte{{127, 0, 0, 1}}}
	strict := Policy{resolver: dns.resolver()}
	dev := Policy{AllowHTTP: true, Allowed: loopbackOnly, resolver: dns.resolver()}
	for _, c := range []struct {
		p     Policy
		url   string
		allow bool
	}{
		{strict, "https://8.8.8.8/hook", true},
		{strict, "https://[2606:4700:4700::1111]:8443/hook", true},
		{strict, "http://8.8.8.8/hook", false},
		{strict, "https://10.0.0.1/hook", false},
		{strict, "https://169.254.169.254/", false},
		{strict, "https://hook.parley.test/", false}, // resolves to 127.0.0.1
		{strict, "https://user:pw@8.8.8.8/", false},
		{strict, "/relative", false},
		{strict, "https:///no-host", false},
		{strict, "ftp://8.8.8.8/", false},
		{dev, "http://127.0.0.1:9/hook", true},
		{dev, "http://hook.parley.test/", true},
		{dev, "http://127.0.0.2/", false},
	} {
		err := c.p.CheckURL(t.Context(), c.url)
		if (err == nil) != c.allow {
			t.Errorf("CheckURL(%s, allow http %v) = %v, want allowed %v", c.url, c.p.AllowHTTP, err, c.allow)
		}
	}
}
