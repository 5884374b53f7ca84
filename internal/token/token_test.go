package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/parley-dev/parley/internal/auth"
)

const (
	testIssuer   = "https://parley.test"
	testAudience = "parley-api"
)

var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// fixture is a set of keys with their raw private halves, for forging tokens.
type fixture struct {
	ed   map[string]ed25519.PrivateKey // by kid
	ec   map[string]*ecdsa.PrivateKey  // by kid
	sets map[string]jwk.Set            // by the kids it holds, comma-joined
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return &fixture{ed: map[string]ed25519.PrivateKey{}, ec: map[string]*ecdsa.PrivateKey{}, sets: map[string]jwk.Set{}}
}

// set returns a parsed JWK set holding the keys named by kids, in order. A kid
// starting with "ec" is a P-256 key; any other is Ed25519. Keys are made on
// first use and reused, so "A" is the same key in every set.
func (f *fixture) set(t testing.TB, kids ...string) jwk.Set {
	t.Helper()
	var keys []map[string]any
	for _, kid := range kids {
		if strings.HasPrefix(kid, "ec") {
			if f.ec[kid] == nil {
				f.ec[kid] = newECDSA(t, elliptic.P256())
			}
			keys = append(keys, rawJWK(t, f.ec[kid], map[string]any{"kid": kid}))
		} else {
			if f.ed[kid] == nil {
				f.ed[kid] = newEd25519(t)
			}
			keys = append(keys, rawJWK(t, f.ed[kid], map[string]any{"kid": kid}))
		}
	}
	set, err := ParseKeySet(setJSON(t, keys...))
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func (f *fixture) manager(t testing.TB, opts Options, kids ...string) *Manager {
	t.Helper()
	if opts.Issuer == "" {
		opts.Issuer = testIssuer
	}
	if opts.Audience == "" {
		opts.Audience = testAudience
	}
	if opts.Now == nil {
		opts.Now = func() time.Time { return testNow }
	}
	m, err := NewManager(f.set(t, kids...), opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func b64(v any) string {
	var b []byte
	switch v := v.(type) {
	case []byte:
		b = v
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			panic(err)
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// forge builds a compact JWS by hand from header and claims, signed by sign
// over the signing input.
func forge(header, claims map[string]any, sign func(input []byte) []byte) string {
	input := b64(header) + "." + b64(claims)
	return input + "." + b64(sign([]byte(input)))
}

func edSigner(priv ed25519.PrivateKey) func([]byte) []byte {
	return func(in []byte) []byte { return ed25519.Sign(priv, in) }
}

func validHeader(kid string) map[string]any {
	return map[string]any{"alg": "EdDSA", "kid": kid, "typ": "at+jwt"}
}

func validClaims(sub uuid.UUID) map[string]any {
	return map[string]any{
		"iss":  testIssuer,
		"aud":  testAudience,
		"sub":  sub.String(),
		"jti":  "forged-jti",
		"iat":  testNow.Unix(),
		"exp":  testNow.Add(time.Hour).Unix(),
		"role": "user",
	}
}

func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// spareBitsFlipped returns the base64url digit that differs from c in its
// lowest bit, which the last digit of a 64-byte signature does not use.
func spareBitsFlipped(c byte) string {
	const digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	return string(digits[strings.IndexByte(digits, c)^1])
}

func decodeSegment(t *testing.T, seg string) map[string]any {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, tt := range []struct {
		name string
		kid  string
		alg  string
		kind auth.Kind
	}{
		{"Ed25519 user", "A", "EdDSA", auth.KindUser},
		{"Ed25519 agent", "A", "EdDSA", auth.KindAgent},
		{"P-256 user", "ec1", "ES256", auth.KindUser},
		{"P-256 agent", "ec1", "ES256", auth.KindAgent},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := f.manager(t, Options{Leeway: DefaultLeeway}, tt.kid)
			sub := uuid.New()
			iss, err := m.Issue(sub, tt.kind, 30*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if !iss.IssuedAt.Equal(testNow) || !iss.ExpiresAt.Equal(testNow.Add(30*time.Minute)) {
				t.Errorf("Issued times = %v .. %v", iss.IssuedAt, iss.ExpiresAt)
			}
			if len(iss.ID) != 22 || strings.ContainsAny(iss.ID, "+/=") {
				t.Errorf("ID %q is not 128 bits of base64url", iss.ID)
			}

			parts := strings.Split(iss.Token, ".")
			if len(parts) != 3 {
				t.Fatalf("token has %d parts", len(parts))
			}
			hdr := decodeSegment(t, parts[0])
			if hdr["alg"] != tt.alg || hdr["kid"] != tt.kid || hdr["typ"] != "at+jwt" {
				t.Errorf("header = %v", hdr)
			}
			claims := decodeSegment(t, parts[1])
			if claims["iss"] != testIssuer || claims["sub"] != sub.String() || claims["jti"] != iss.ID ||
				claims["role"] != tt.kind.String() || claims["iat"] != float64(testNow.Unix()) ||
				claims["exp"] != float64(iss.ExpiresAt.Unix()) {
				t.Errorf("claims = %v", claims)
			}

			p, err := m.Verify(iss.Token)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := auth.Principal{ID: sub, Kind: tt.kind, TokenID: iss.ID, ExpiresAt: iss.ExpiresAt}
			if p.ID != want.ID || p.Kind != want.Kind || p.TokenID != want.TokenID || !p.ExpiresAt.Equal(want.ExpiresAt) {
				t.Errorf("Verify = %+v, want %+v", p, want)
			}
		})
	}
}

// TestFamilyClaim checks that a token issued from a refresh family names it
// and a token issued from none names nothing.
func TestFamilyClaim(t *testing.T) {
	t.Parallel()
	m := newFixture(t).manager(t, Options{}, "A")
	sub, family := uuid.New(), uuid.New()
	in, err := m.IssueInFamily(sub, auth.KindUser, family, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if claims := decodeSegment(t, strings.Split(in.Token, ".")[1]); claims["sid"] != family.String() {
		t.Errorf("claims = %v, want sid %s", claims, family)
	}
	if p, err := m.Verify(in.Token); err != nil || p.FamilyID != family || p.ID != sub {
		t.Errorf("Verify = %+v, %v; want family %s", p, err, family)
	}
	out, err := m.Issue(sub, auth.KindAgent, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := decodeSegment(t, strings.Split(out.Token, ".")[1])["sid"]; ok {
		t.Error("a token without a family has a sid claim")
	}
	if p, err := m.Verify(out.Token); err != nil || p.FamilyID != uuid.Nil {
		t.Errorf("Verify = %+v, %v; want no family", p, err)
	}
}

func TestIssueUniqueIDs(t *testing.T) {
	t.Parallel()
	m := newFixture(t).manager(t, Options{}, "A")
	seen := map[string]bool{}
	for range 100 {
		iss, err := m.Issue(uuid.New(), auth.KindUser, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if seen[iss.ID] {
			t.Fatalf("jti %q repeated", iss.ID)
		}
		seen[iss.ID] = true
	}
}

func TestRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	onlyA := f.manager(t, Options{}, "A")
	onlyB := f.manager(t, Options{}, "B")
	ab := f.manager(t, Options{}, "A", "B")
	mixed := f.manager(t, Options{}, "ec1", "A")

	issue := func(m *Manager) string {
		t.Helper()
		iss, err := m.Issue(uuid.New(), auth.KindUser, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return iss.Token
	}
	kidOf := func(tok string) any { return decodeSegment(t, strings.Split(tok, ".")[0])["kid"] }

	fromB := issue(onlyB)
	if _, err := ab.Verify(fromB); err != nil {
		t.Errorf("[A,B] refused a token signed by B: %v", err)
	}
	fromAB := issue(ab)
	if kid := kidOf(fromAB); kid != "A" {
		t.Errorf("[A,B] signed with kid %v, want A", kid)
	}
	if _, err := onlyA.Verify(fromAB); err != nil {
		t.Errorf("[A] refused a token from [A,B]: %v", err)
	}
	if _, err := onlyB.Verify(fromAB); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("[B] verified a token signed by A: %v", err)
	}
	// Rotating from an Ed25519 key to a P-256 one keeps old tokens valid too.
	if _, err := mixed.Verify(issue(onlyA)); err != nil {
		t.Errorf("[ec1,A] refused a token signed by A: %v", err)
	}
	if kid := kidOf(issue(mixed)); kid != "ec1" {
		t.Errorf("[ec1,A] signed with kid %v, want ec1", kid)
	}
}

func TestLeeway(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	clock := testNow
	m := f.manager(t, Options{Leeway: 30 * time.Second, Now: func() time.Time { return clock }}, "A")
	iss, err := m.Issue(uuid.New(), auth.KindUser, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// A replica whose clock runs 20 s behind sees iat in the future but within leeway.
	behind := f.manager(t, Options{Leeway: 30 * time.Second, Now: func() time.Time { return testNow.Add(-20 * time.Second) }}, "A")
	if _, err := behind.Verify(iss.Token); err != nil {
		t.Errorf("token refused by a replica 20s behind: %v", err)
	}
	ahead := f.manager(t, Options{Leeway: 30 * time.Second, Now: func() time.Time { return testNow.Add(80 * time.Second) }}, "A")
	if _, err := ahead.Verify(iss.Token); err != nil {
		t.Errorf("token refused 20s after exp with 30s leeway: %v", err)
	}
}

// TestVerifyRefuses builds each attack by hand so that the test exercises the
// attack itself, not a library's idea of it.
func TestVerifyRefuses(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	m := f.manager(t, Options{Leeway: 30 * time.Second}, "A", "ec1")
	privA := f.ed["A"]
	pubA := privA.Public().(ed25519.PublicKey)
	sub := uuid.New()
	good := validClaims(sub)
	signA := edSigner(privA)
	attacker := newEd25519(t)

	// Sanity: the hand-made token with valid inputs is accepted, so every
	// refusal below is caused by the one thing each case changes.
	if p, err := m.Verify(forge(validHeader("A"), good, signA)); err != nil || p.ID != sub {
		t.Fatalf("hand-made valid token: %+v, %v", p, err)
	}

	valid, err := m.Issue(sub, auth.KindUser, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(valid.Token, ".")
	jwksJSON, err := m.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	hmacWith := func(secret []byte) func([]byte) []byte {
		return func(in []byte) []byte {
			mac := hmac.New(sha256.New, secret)
			mac.Write(in)
			return mac.Sum(nil)
		}
	}
	hs256 := map[string]any{"alg": "HS256", "kid": "A", "typ": "at+jwt"}
	var pubJWK map[string]any
	{
		var doc struct{ Keys []map[string]any }
		if err := json.Unmarshal(jwksJSON, &doc); err != nil {
			t.Fatal(err)
		}
		pubJWK = doc.Keys[0]
	}
	pubJWKJSON, _ := json.Marshal(pubJWK)

	expired := f.manager(t, Options{Now: func() time.Time { return testNow.Add(-2 * time.Hour) }}, "A")
	expiredTok, err := expired.Issue(sub, auth.KindUser, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	future := f.manager(t, Options{Now: func() time.Time { return testNow.Add(10 * time.Minute) }}, "A")
	futureTok, err := future.Issue(sub, auth.KindUser, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherIss := f.manager(t, Options{Issuer: "https://evil.test"}, "A")
	otherIssTok, err := otherIss.Issue(sub, auth.KindUser, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherAud := f.manager(t, Options{Audience: "someone-else"}, "A")
	otherAudTok, err := otherAud.Issue(sub, auth.KindUser, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		want  string // the reason, so each case fails for the thing it tests
		token string
	}{
		{"empty", "malformed token", ""},
		{"garbage", "malformed token", "not.a.token"},
		{"two segments", "malformed token", parts[0] + "." + parts[1]},
		{"oversized", "malformed token", strings.Repeat("a", maxTokenBytes) + ".b.c"},
		{"JSON serialization", "malformed token", `{"payload":"` + parts[1] + `","protected":"` + parts[0] + `","signature":"` + parts[2] + `"}`},
		{"alg none, empty signature", "alg not allowed", b64(with(validHeader("A"), "alg", "none")) + "." + b64(good) + "."},
		{"alg none, no kid", "missing kid", b64(map[string]any{"alg": "none", "typ": "at+jwt"}) + "." + b64(good) + "."},
		{"alg none, real signature kept", "alg not allowed", b64(with(validHeader("A"), "alg", "none")) + "." + parts[1] + "." + parts[2]},
		{"HS256 keyed with raw public key", "alg not allowed", forge(hs256, good, hmacWith(pubA))},
		{"HS256 keyed with public JWK JSON", "alg not allowed", forge(hs256, good, hmacWith(pubJWKJSON))},
		{"HS256 keyed with JWKS document", "alg not allowed", forge(hs256, good, hmacWith(jwksJSON))},
		{"ES256 header on Ed25519 key", "alg not allowed", forge(with(validHeader("A"), "alg", "ES256"), good, signA)},
		{"EdDSA header on P-256 key", "alg not allowed", forge(validHeader("ec1"), good, signA)},
		{"tampered payload (role)", "invalid signature", parts[0] + "." + b64(with(decodeSegment(t, parts[1]), "role", "agent")) + "." + parts[2]},
		{"tampered payload (sub)", "invalid signature", parts[0] + "." + b64(with(decodeSegment(t, parts[1]), "sub", uuid.NewString())) + "." + parts[2]},
		{"tampered payload (exp)", "invalid signature", parts[0] + "." + b64(with(decodeSegment(t, parts[1]), "exp", testNow.Add(1000*time.Hour).Unix())) + "." + parts[2]},
		{"tampered header (kid)", "alg not allowed", b64(validHeader("ec1")) + "." + parts[1] + "." + parts[2]},
		{"truncated signature", "invalid signature", valid.Token[:len(valid.Token)-4]},
		// Found by FuzzVerify: jwx trims whitespace and ignores a
		// signature's spare bits, so these verified as second spellings.
		{"leading space", "malformed token", " " + valid.Token},
		{"trailing newline", "malformed token", valid.Token + "\n"},
		{"spare bits of the signature", "invalid signature", valid.Token[:len(valid.Token)-1] + spareBitsFlipped(valid.Token[len(valid.Token)-1])},
		{"signature of another key under kid A", "invalid signature", forge(validHeader("A"), good, edSigner(attacker))},
		{"unknown kid", "unknown kid", forge(validHeader("Z"), good, edSigner(attacker))},
		{"missing kid", "missing kid", forge(with(validHeader("A"), "kid", nil), good, signA)},
		{"empty kid", "missing kid", forge(validHeader(""), good, signA)},
		{"wrong typ", "wrong typ", forge(with(validHeader("A"), "typ", "JWT"), good, signA)},
		{"missing typ", "wrong typ", forge(with(validHeader("A"), "typ", nil), good, signA)},
		{"crit header", "crit", forge(with(validHeader("A"), "crit", []string{"exp"}, "exp", 1), good, signA)},
		{"b64 false", "crit", forge(with(validHeader("A"), "b64", false, "crit", []string{"b64"}), good, signA)},
		{"b64 false without crit", "b64", forge(with(validHeader("A"), "b64", false), good, signA)},
		{"jwk header names attacker key", "unknown kid", forge(with(validHeader("Z"), "jwk", rawJWK(t, attacker.Public(), nil)), good, edSigner(attacker))},
		{"expired", "\"exp\" not satisfied", expiredTok.Token},
		{"expired, hand-made", "\"exp\" not satisfied", forge(validHeader("A"), with(good, "exp", testNow.Add(-time.Minute).Unix()), signA)},
		{"not yet valid (iat)", "\"iat\" not satisfied", futureTok.Token},
		{"not yet valid (nbf)", "\"nbf\" not satisfied", forge(validHeader("A"), with(good, "nbf", testNow.Add(time.Hour).Unix()), signA)},
		{"wrong iss", "\"iss\" not satisfied", otherIssTok.Token},
		{"wrong aud", "\"aud\" not satisfied", otherAudTok.Token},
		{"aud list without ours", "\"aud\" not satisfied", forge(validHeader("A"), with(good, "aud", []string{"a", "b"}), signA)},
		{"missing iss", "\"iss\"", forge(validHeader("A"), with(good, "iss", nil), signA)},
		{"missing aud", "\"aud\"", forge(validHeader("A"), with(good, "aud", nil), signA)},
		{"missing sub", "\"sub\"", forge(validHeader("A"), with(good, "sub", nil), signA)},
		{"sub not a uuid", "invalid sub", forge(validHeader("A"), with(good, "sub", "admin"), signA)},
		{"nil sub", "invalid sub", forge(validHeader("A"), with(good, "sub", uuid.Nil.String()), signA)},
		{"missing jti", "\"jti\"", forge(validHeader("A"), with(good, "jti", nil), signA)},
		{"empty jti", "empty jti", forge(validHeader("A"), with(good, "jti", ""), signA)},
		{"missing iat", "\"iat\"", forge(validHeader("A"), with(good, "iat", nil), signA)},
		{"missing exp", "\"exp\"", forge(validHeader("A"), with(good, "exp", nil), signA)},
		{"missing role", "\"role\"", forge(validHeader("A"), with(good, "role", nil), signA)},
		{"wrong role", "invalid role", forge(validHeader("A"), with(good, "role", "admin"), signA)},
		{"role upper case", "invalid role", forge(validHeader("A"), with(good, "role", "User"), signA)},
		{"role not a string", "invalid role", forge(validHeader("A"), with(good, "role", 1), signA)},
		{"role list", "invalid role", forge(validHeader("A"), with(good, "role", []string{"user"}), signA)},
		{"sid not a uuid", "invalid sid", forge(validHeader("A"), with(good, "sid", "session"), signA)},
		{"nil sid", "invalid sid", forge(validHeader("A"), with(good, "sid", uuid.Nil.String()), signA)},
		{"sid not a string", "invalid sid", forge(validHeader("A"), with(good, "sid", 7), signA)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := m.Verify(tt.token)
			if err == nil {
				t.Fatalf("Verify accepted it: %+v", p)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if !errors.Is(err, auth.ErrUnauthenticated) {
				t.Errorf("error %v does not wrap auth.ErrUnauthenticated", err)
			}
			if p != (auth.Principal{}) {
				t.Errorf("Verify returned a principal with its error: %+v", p)
			}
			if d := base64.RawURLEncoding.EncodeToString(privA.Seed()); strings.Contains(err.Error(), d) {
				t.Errorf("error leaks the private key: %v", err)
			}
		})
	}
}

func TestIssueRejects(t *testing.T) {
	t.Parallel()
	m := newFixture(t).manager(t, Options{}, "A")
	for _, tt := range []struct {
		name string
		sub  uuid.UUID
		kind auth.Kind
		ttl  time.Duration
	}{
		{"nil subject", uuid.Nil, auth.KindUser, time.Hour},
		{"zero kind", uuid.New(), 0, time.Hour},
		{"unknown kind", uuid.New(), auth.Kind(7), time.Hour},
		{"zero ttl", uuid.New(), auth.KindUser, 0},
		{"negative ttl", uuid.New(), auth.KindUser, -time.Hour},
	} {
		if _, err := m.Issue(tt.sub, tt.kind, tt.ttl); err == nil {
			t.Errorf("%s: Issue succeeded", tt.name)
		}
	}
}

func TestNewManagerRejects(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	good := f.set(t, "A")
	pub, err := jwk.PublicSetOf(good)
	if err != nil {
		t.Fatal(err)
	}
	noKid := jwk.NewSet()
	k, err := jwk.FromRaw(newEd25519(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := noKid.AddKey(k); err != nil {
		t.Fatal(err)
	}
	opts := Options{Issuer: testIssuer, Audience: testAudience}
	for _, tt := range []struct {
		name string
		set  jwk.Set
		opts Options
	}{
		{"nil set", nil, opts},
		{"empty set", jwk.NewSet(), opts},
		{"public set", pub, opts},
		{"key without kid", noKid, opts},
		{"no issuer", good, Options{Audience: testAudience}},
		{"no audience", good, Options{Issuer: testIssuer}},
		{"negative leeway", good, Options{Issuer: testIssuer, Audience: testAudience, Leeway: -time.Second}},
		{"huge leeway", good, Options{Issuer: testIssuer, Audience: testAudience, Leeway: time.Hour}},
	} {
		if _, err := NewManager(tt.set, tt.opts); err == nil {
			t.Errorf("%s: NewManager succeeded", tt.name)
		}
	}
}

func benchmarkManagers(b *testing.B) map[string]*Manager {
	f := newFixture(b)
	return map[string]*Manager{
		"EdDSA": f.manager(b, Options{Now: time.Now}, "A"),
		"ES256": f.manager(b, Options{Now: time.Now}, "ec1"),
	}
}

func BenchmarkIssue(b *testing.B) {
	for _, alg := range []string{"EdDSA", "ES256"} {
		m := benchmarkManagers(b)[alg]
		sub := uuid.New()
		b.Run(alg, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Issue(sub, auth.KindUser, time.Hour); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, alg := range []string{"EdDSA", "ES256"} {
		m := benchmarkManagers(b)[alg]
		iss, err := m.Issue(uuid.New(), auth.KindUser, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(alg, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Verify(iss.Token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
