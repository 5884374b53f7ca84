package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(env(map[string]string{"DATABASE_URL": "postgres://x", "PARLEY_JWT_KEYS": "/k.json", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":8080" || c.MaxRequestBytes != 16<<20 || c.AccessTokenTTL != 30*time.Minute ||
		c.RefreshTokenTTL != 720*time.Hour || c.RateLimitUserPerMinute != 60 || c.RateLimitIPPerMinute != 100 ||
		c.RateLimitAgentPerMinute != 6000 {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if c.BodyTimeout != 10*time.Second || c.BodyMinRate != 8192 || c.OpsAddr != "" {
		t.Fatalf("body time or ops address defaults not applied: %+v", c)
	}
	if c.MemoryLimit != MemoryLimitAuto {
		t.Fatalf("memory limit should default to auto, got %d", c.MemoryLimit)
	}
	if c.LiveKitPublicURL != c.LiveKitURL {
		t.Fatalf("public LiveKit URL should default to LIVEKIT_URL, got %q", c.LiveKitPublicURL)
	}
	if c.ReadyzRequireDatabase {
		t.Fatal("readyz must not require the database by default (contract: an outage does not turn it 503)")
	}
}

func TestReadyzRequireDatabase(t *testing.T) {
	c, err := Load(env(map[string]string{"DATABASE_URL": "x", "PARLEY_JWT_KEYS": "k", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s",
		"PARLEY_READYZ_REQUIRE_DATABASE": "true"}))
	if err != nil || !c.ReadyzRequireDatabase {
		t.Fatalf("Load = %+v, %v; want ReadyzRequireDatabase", c.ReadyzRequireDatabase, err)
	}
}

func TestLoadErrorsNameTheVariable(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "postgres://x", "PARLEY_JWT_KEYS": "/k.json", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
	tests := []struct {
		name, key, value string
	}{
		{"missing database", "DATABASE_URL", ""},
		{"missing livekit key", "LIVEKIT_API_KEY", ""},
		{"missing livekit secret", "LIVEKIT_API_SECRET", " "},
		{"bad duration", "PARLEY_ACCESS_TOKEN_TTL", "soon"},
		{"bad number", "PARLEY_RATE_LIMIT_USER_PER_MINUTE", "many"},
		{"zero limit", "PARLEY_RATE_LIMIT_IP_PER_MINUTE", "0"},
		{"limit faster than a microsecond apart", "PARLEY_RATE_LIMIT_AGENT_PER_MINUTE", "60000001"},
		{"bad cidr", "PARLEY_TRUSTED_PROXIES", "10.0.0.0/99"},
		{"url ttl over 15m", "PARLEY_FILE_URL_TTL", "16m"},
		{"bad log level", "PARLEY_LOG_LEVEL", "loud"},
		{"bad memory limit", "PARLEY_MEMORY_LIMIT", "lots"},
		{"memory limit in decimal units", "PARLEY_MEMORY_LIMIT", "450MB"},
		{"tiny memory limit", "PARLEY_MEMORY_LIMIT", "1MiB"},
		{"body timeout too short", "PARLEY_BODY_TIMEOUT", "1ms"},
		{"zero body rate", "PARLEY_BODY_MIN_RATE", "0"},
		{"ops on the API address", "PARLEY_OPS_ADDR", ":8080"},
		{"not a boolean", "PARLEY_READYZ_REQUIRE_DATABASE", "sometimes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]string{}
			for k, v := range base {
				m[k] = v
			}
			m[tt.key] = tt.value
			_, err := Load(env(m))
			var ce *Error
			if !errors.As(err, &ce) || ce.Var != tt.key {
				t.Fatalf("want an error naming %s, got %v", tt.key, err)
			}
			if !strings.HasPrefix(err.Error(), "config: "+tt.key+": ") {
				t.Fatalf("message %q should start with the variable", err)
			}
		})
	}
}

// TestLiveKitKeysHaveNoDefault: LiveKit's development keys are public, so
// a missing key or secret stops start-up with a message naming both.
func TestLiveKitKeysHaveNoDefault(t *testing.T) {
	for _, m := range []map[string]string{
		{},
		{"LIVEKIT_API_KEY": "k"},
		{"LIVEKIT_API_SECRET": "s"},
	} {
		m["DATABASE_URL"], m["PARLEY_JWT_KEYS"] = "postgres://x", "/k.json"
		_, err := Load(env(m))
		if err == nil || !strings.Contains(err.Error(), "LIVEKIT_API_KEY and LIVEKIT_API_SECRET") || strings.Contains(err.Error(), "\n") {
			t.Errorf("Load without a LiveKit key or secret = %v, want one line naming both", err)
		}
	}
	var b strings.Builder
	if err := WriteHelp(&b); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, "LIVEKIT_API_") && !strings.Contains(line, "(required)") {
			t.Errorf("help: %q, want (required)", line)
		}
	}
}

func TestTrustedProxiesAcceptsAddressesAndPrefixes(t *testing.T) {
	c, err := Load(env(map[string]string{"DATABASE_URL": "x", "PARLEY_JWT_KEYS": "k", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s",
		"PARLEY_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.TrustedProxies) != 2 || c.TrustedProxies[1].Bits() != 32 {
		t.Fatalf("got %v", c.TrustedProxies)
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	var b strings.Builder
	if err := WriteHelp(&b); err != nil {
		t.Fatal(err)
	}
	for _, v := range Vars() {
		if !strings.Contains(b.String(), v.Name) {
			t.Errorf("help lacks %s", v.Name)
		}
	}
}

func TestMemoryLimit(t *testing.T) {
	for v, want := range map[string]int64{
		"auto":      MemoryLimitAuto,
		"AUTO":      MemoryLimitAuto,
		"off":       0,
		"450MiB":    450 << 20,
		"2GiB":      2 << 30,
		"16777216":  16 << 20,
		"16777216B": 16 << 20,
		"20000KiB":  20000 << 10,
		"1TiB":      1 << 40,
	} {
		var got int64
		if err := parseMemoryLimit(v, &got); err != nil || got != want {
			t.Errorf("parseMemoryLimit(%q) = %d, %v; want %d", v, got, err, want)
		}
	}
}

func TestPprofAddrIsTheOpsAddress(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "x", "PARLEY_JWT_KEYS": "k", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"older name alone", with("PARLEY_PPROF_ADDR", "127.0.0.1:6060"), "127.0.0.1:6060"},
		{"new name alone", with("PARLEY_OPS_ADDR", ":9090"), ":9090"},
		{"both, the same", with("PARLEY_OPS_ADDR", ":9090", "PARLEY_PPROF_ADDR", ":9090"), ":9090"},
	} {
		c, err := Load(env(tt.env))
		if err != nil || c.OpsAddr != tt.want {
			t.Errorf("%s: OpsAddr %q, %v; want %q", tt.name, c.OpsAddr, err, tt.want)
		}
	}
	_, err := Load(env(with("PARLEY_OPS_ADDR", ":9090", "PARLEY_PPROF_ADDR", ":6060")))
	var cerr *Error
	if !errors.As(err, &cerr) || cerr.Var != "PARLEY_PPROF_ADDR" {
		t.Fatalf("two different ops addresses: %v, want an error naming PARLEY_PPROF_ADDR", err)
	}
}

func TestGOMEMLIMITWins(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "x", "PARLEY_JWT_KEYS": "k", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s",
		"PARLEY_MEMORY_LIMIT": "300MiB"}
	c, err := Load(env(base))
	if err != nil || c.MemoryLimit != 300<<20 {
		t.Fatalf("without GOMEMLIMIT: limit %d, %v; want 300MiB", c.MemoryLimit, err)
	}
	base["GOMEMLIMIT"] = "1TiB"
	if c, err = Load(env(base)); err != nil || c.MemoryLimit != 0 {
		t.Fatalf("with GOMEMLIMIT: limit %d, %v; want 0 (the runtime's own limit stands)", c.MemoryLimit, err)
	}
}

func TestDatabaseURLAlone(t *testing.T) {
	url, err := DatabaseURL(env(map[string]string{"DATABASE_URL": " postgres://x "}))
	if err != nil || url != "postgres://x" {
		t.Fatalf("DatabaseURL = %q, %v; want postgres://x", url, err)
	}
	_, err = DatabaseURL(env(nil))
	var cerr *Error
	if !errors.As(err, &cerr) || cerr.Var != "DATABASE_URL" || err.Error() != "config: DATABASE_URL: required but not set" {
		t.Fatalf("DatabaseURL without it: %v; want a config error naming DATABASE_URL", err)
	}
}

func TestLoadDev(t *testing.T) {
	c, dev, err := LoadDev(env(nil), "postgres://dev", "redis://dev")
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != "postgres://dev" || c.ValkeyURL != "redis://dev" || dev.DatabaseSet || dev.ValkeySet {
		t.Fatalf("nothing set: %q %q %+v; want dev's servers, neither set", c.DatabaseURL, c.ValkeyURL, dev)
	}
	if !dev.LiveKitDevKeys || c.JWTKeysPath != ".parley-dev/jwks.json" || c.ShutdownDelay != 0 {
		t.Fatalf("dev defaults not applied: %+v, %+v", dev, c)
	}
	c, dev, err = LoadDev(env(map[string]string{"DATABASE_URL": "postgres://mine", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}), "postgres://dev", "redis://dev")
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != "postgres://mine" || !dev.DatabaseSet || dev.ValkeySet || dev.LiveKitDevKeys {
		t.Fatalf("DATABASE_URL and LiveKit keys set: %q %+v", c.DatabaseURL, dev)
	}
}
