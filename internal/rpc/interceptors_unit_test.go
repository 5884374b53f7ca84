package rpc

import (
	"net/netip"
	"testing"
)

func TestBearerToken(t *testing.T) {
	for header, want := range map[string]string{
		"Bearer abc.def":   "abc.def",
		"bearer abc.def":   "abc.def",
		"BEARER  abc.def ": "abc.def",
		"Bearer ":          "",
		"Basic dXNlcjpw":   "",
		"Bearerabc":        "",
		"":                 "",
	} {
		got, ok := bearerToken(header)
		if got != want || ok != (want != "") {
			t.Errorf("bearerToken(%q) = %q, %v; want %q", header, got, ok, want)
		}
	}
}

func TestIPLimitKeyGroupsIPv6By64(t *testing.T) {
	a := ipLimitKey(netip.MustParseAddr("2001:db8:1:2::1"))
	b := ipLimitKey(netip.MustParseAddr("2001:db8:1:2:ffff::9"))
	c := ipLimitKey(netip.MustParseAddr("2001:db8:1:3::1"))
	if a != b || a == c {
		t.Errorf("keys %q %q %q: want one budget per /64", a, b, c)
	}
	if got := ipLimitKey(netip.MustParseAddr("192.0.2.7")); got != "ip:192.0.2.7" {
		t.Errorf("IPv4 key %q", got)
	}
}
