package config

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzLoad sets two variables to any values and checks that Load either
// names one of them in an *Error or returns a Config that keeps every
// bound the variables promise; that it is deterministic; and that the
// spaces around a value do not matter.
func FuzzLoad(f *testing.F) {
	names := make([]string, len(vars))
	base := map[string]string{}
	for i, v := range vars {
		names[i] = v.Name
		if v.Required {
			base[v.Name] = "x"
		}
	}
	if _, err := Load(env(base)); err != nil {
		f.Fatalf("the base environment does not load: %v", err)
	}
	index := func(name string) uint8 {
		for i, n := range names {
			if n == name {
				return uint8(i)
			}
		}
		f.Fatalf("no variable %s", name)
		return 0
	}
	for _, s := range []struct{ name, value string }{
		{"PARLEY_MAX_REQUEST_BYTES", "1024"},
		{"PARLEY_MAX_REQUEST_BYTES", "-9223372036854775808"},
		{"PARLEY_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,fe80::1%eth0"},
		{"PARLEY_TRUSTED_PROXIES", "::ffff:10.1.2.3/104"},
		{"PARLEY_MEMORY_LIMIT", "450MiB"},
		{"PARLEY_MEMORY_LIMIT", "8796093022208TiB"},
		{"PARLEY_MEMORY_LIMIT", "16777216B"},
		{"PARLEY_FILE_URL_TTL", "15m0.000000001s"},
		{"PARLEY_ACCESS_TOKEN_TTL", "-1h"},
		{"PARLEY_RATE_LIMIT_AGENT_PER_MINUTE", "60000000"},
		{"PARLEY_LOG_LEVEL", "WARN"},
		{"PARLEY_DB_MAX_IDLE_CONNS", "99"},
		{"PARLEY_CORS_ORIGINS", " , https://a.example ,,"},
		{"PARLEY_PUBLIC_URL", "https://parley.example///"},
		{"DATABASE_URL", " \t"},
	} {
		f.Add(index(s.name), s.value, index("PARLEY_DB_MAX_OPEN_CONNS"), "4")
	}
	f.Fuzz(func(t *testing.T, i1 uint8, v1 string, i2 uint8, v2 string) {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		n1, n2 := names[int(i1)%len(names)], names[int(i2)%len(names)]
		m[n2] = v2
		m[n1] = v1 // the first wins when both name one variable
		c, err := Load(env(m))
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.Var != n1 && ce.Var != n2 || !strings.HasPrefix(err.Error(), "config: "+ce.Var+": ") {
				t.Fatalf("Load with %s=%q and %s=%q: %v, want an *Error naming one of them", n1, v1, n2, v2, err)
			}
			return
		}
		checkBounds(t, c)
		again, err := Load(env(m))
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Fatalf("Load is not deterministic: %+v then %+v, %v", c, again, err)
		}
		padded := map[string]string{}
		for k, v := range m {
			padded[k] = " \t" + v + "\n "
		}
		if p, err := Load(env(padded)); err != nil || !reflect.DeepEqual(c, p) {
			t.Fatalf("spaces around the values changed the result: %+v, %v; want %+v", p, err, c)
		}
	})
}

// checkBounds asserts what each variable's help and parser promise.
func checkBounds(t *testing.T, c Config) {
	t.Helper()
	fail := func(what string, v any) { t.Fatalf("Load accepted %s = %v", what, v) }
	if c.MaxRequestBytes < 1024 {
		fail("MaxRequestBytes", c.MaxRequestBytes)
	}
	for name, d := range map[string][2]time.Duration{
		"ShutdownDelay":   {c.ShutdownDelay, 0},
		"DrainTimeout":    {c.DrainTimeout, time.Millisecond},
		"DBConnLifetime":  {c.DBConnLifetime, 0},
		"AccessTokenTTL":  {c.AccessTokenTTL, time.Second},
		"RefreshTokenTTL": {c.RefreshTokenTTL, time.Second},
		"AgentTokenTTL":   {c.AgentTokenTTL, time.Second},
		"WatchHeartbeat":  {c.WatchHeartbeat, 10 * time.Millisecond},
		"FileURLTTL":      {c.FileURLTTL, time.Second},
		"LiveKitTokenTTL": {c.LiveKitTokenTTL, time.Second},
	} {
		if d[0] < d[1] {
			fail(name, d[0])
		}
	}
	if c.FileURLTTL > 15*time.Minute {
		fail("FileURLTTL", c.FileURLTTL)
	}
	for name, r := range map[string]int{"user": c.RateLimitUserPerMinute, "ip": c.RateLimitIPPerMinute, "agent": c.RateLimitAgentPerMinute} {
		if r < 1 || r > maxRatePerMinute {
			fail(name+" rate", r)
		}
	}
	if c.DBMaxOpenConns < 1 || c.DBMaxIdleConns < 0 || c.DBMaxIdleConns > c.DBMaxOpenConns {
		fail("DB connections (open, idle)", [2]int{c.DBMaxOpenConns, c.DBMaxIdleConns})
	}
	if c.MemoryLimit != MemoryLimitAuto && c.MemoryLimit != 0 && c.MemoryLimit < 16<<20 {
		fail("MemoryLimit", c.MemoryLimit)
	}
	if c.MemoryLimit > 0 {
		var back int64
		if err := parseMemoryLimit(strconv.FormatInt(c.MemoryLimit, 10), &back); err != nil || back != c.MemoryLimit {
			t.Fatalf("memory limit %d does not read back: %d, %v", c.MemoryLimit, back, err)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		fail("LogLevel", c.LogLevel)
	}
	for _, p := range c.TrustedProxies {
		if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
			fail("trusted proxy", p)
		}
	}
	for _, list := range [][]string{c.CORSOrigins, c.FileContentTypes} {
		for _, s := range list {
			if s == "" || s != strings.TrimSpace(s) || strings.Contains(s, ",") {
				fail("list entry", strconv.Quote(s))
			}
		}
	}
	if strings.HasSuffix(c.PublicURL, "/") {
		fail("PublicURL", c.PublicURL)
	}
	if c.LiveKitPublicURL == "" && c.LiveKitURL != "" {
		fail("LiveKitPublicURL", `""`)
	}
}
