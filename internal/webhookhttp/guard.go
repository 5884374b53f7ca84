// Package webhookhttp carries Parley's outbound webhooks over HTTP: a client
// that reaches only public addresses unless the operator allows more, and
// the Standard Webhooks signature (https://www.standardwebhooks.com) on each
// delivery.
//
// The address rule is checked on the socket's address at connect time
// (net.Dialer.ControlContext), after DNS resolution and for every address
// the dialer tries, so a name whose answers change between a check and the
// connection (DNS rebinding) cannot reach a refused address. Redirects are
// not followed: a 3xx answer is the delivery's result, and a customer
// registers the URL that answers. Proxies from the environment are ignored,
// since through a proxy the dial check would see only the proxy.
package webhookhttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"syscall"
)

// ErrForbiddenAddress is returned (wrapped in the request's error) when a
// delivery would connect to an address the Policy refuses: loopback,
// private, link-local, shared, multicast, reserved or unspecified, outside
// the Policy's allowed networks.
var ErrForbiddenAddress = errors.New("address not allowed")

// ErrForbiddenScheme is returned when a URL is not https and the Policy does
// not allow plain http.
var ErrForbiddenScheme = errors.New("only https URLs are allowed")

// Policy says where outbound requests may go.
type Policy struct {
	// AllowHTTP lets plain http URLs through (development and tests).
	AllowHTTP bool
	// Allowed are networks reachable although not public, e.g.
	// 127.0.0.1/32 in tests or 10.20.0.0/16 for an operator's own receivers.
	Allowed []netip.Prefix

	// resolver is where CheckURL resolves names (tests); nil is the
	// system's.
	resolver *net.Resolver
}

// refused are the networks no delivery reaches unless allowed, each with
// the reason the error gives. IPv4-mapped IPv6 addresses are unmapped
// before the check, and NAT64 and 6to4 addresses are checked by the IPv4
// address they carry.
var refused = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (carrier-grade NAT)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay anycast"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},

	{netip.MustParsePrefix("::/96"), "unspecified, loopback or IPv4-compatible"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("2001::/23"), "IETF protocol assignments (Teredo, benchmarking, ORCHID)"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("3fff::/20"), "documentation"},
	{netip.MustParsePrefix("fc00::/7"), "unique local (private)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

var (
	nat64     = []netip.Prefix{netip.MustParsePrefix("64:ff9b::/96"), netip.MustParsePrefix("64:ff9b:1::/48")}
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// check returns nil if addr may be connected to under p, and otherwise an
// error wrapping ErrForbiddenAddress that says why.
func (p Policy) check(addr netip.Addr) error {
	addr = addr.WithZone("")
	target := embeddedIPv4(addr.Unmap())
	for _, a := range p.Allowed {
		if a.Contains(addr) || a.Contains(addr.Unmap()) || a.Contains(target) {
			return nil
		}
	}
	for _, r := range refused {
		if r.prefix.Contains(target) {
			if target != addr {
				return fmt.Errorf("%w: %s carries %s, which is %s", ErrForbiddenAddress, addr, target, r.why)
			}
			return fmt.Errorf("%w: %s is %s", ErrForbiddenAddress, addr, r.why)
		}
	}
	if !target.IsValid() || !target.IsGlobalUnicast() {
		return fmt.Errorf("%w: %s is not a global unicast address", ErrForbiddenAddress, addr)
	}
	return nil
}

// embeddedIPv4 is the IPv4 address a NAT64 or 6to4 address reaches, which
// is where its packets end up; any other address is itself.
func embeddedIPv4(addr netip.Addr) netip.Addr {
	if !addr.Is6() {
		return addr
	}
	b := addr.As16()
	for _, p := range nat64 {
		if p.Contains(addr) {
			return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		}
	}
	if sixToFour.Contains(addr) {
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
	}
	return addr
}

// control is the dialer's ControlContext: it runs on every socket after
// resolution and before connect, with the address actually dialled.
func (p Policy) control(_ context.Context, network, address string, _ syscall.RawConn) error {
	switch network {
	case "tcp4", "tcp6":
	default:
		return fmt.Errorf("%w: network %s", ErrForbiddenAddress, network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unparsable socket address %q", ErrForbiddenAddress, address)
	}
	return p.check(ap.Addr())
}

// CheckHost resolves host with r and reports the first answer the Policy
// refuses, so that registering an endpoint can fail early with a clear
// reason. It is advice, not the guard: the answers may change before a
// delivery connects, and the dialer checks again then.
func (p Policy) CheckHost(ctx context.Context, r *net.Resolver, host string) error {
	if addr, err := netip.ParseAddr(host); err == nil {
		return p.check(addr)
	}
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", host, err)
	}
	for _, a := range addrs {
		if err := p.check(a); err != nil {
			return err
		}
	}
	return nil
}

// CheckURL refuses a URL the Policy would refuse to deliver to: its scheme,
// or an address its host resolves to now (see CheckHost). It implements
// webhook.URLChecker.
func (p Policy) CheckURL(ctx context.Context, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return errors.New("not an absolute URL with a host")
	}
	if u.Scheme != "https" && !(p.AllowHTTP && u.Scheme == "http") {
		return fmt.Errorf("%w, not %s", ErrForbiddenScheme, u.Scheme)
	}
	if u.User != nil {
		return errors.New("credentials in a URL are not allowed")
	}
	return p.CheckHost(ctx, p.resolver, u.Hostname())
}
