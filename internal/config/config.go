// Package config reads Parley's settings from the environment. It is the only
// package that looks at environment variables: everything else receives a
// Config. Every variable is declared once in vars, which drives parsing,
// validation and the `parley serve --help` listing alike.
package config

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/parley-dev/parley/internal/memlimit"
)

// Config holds every setting of a Parley process.
type Config struct {
	HTTPAddr        string
	MaxRequestBytes int64
	// BodyTimeout and BodyMinRate bound the time a request body may take to
	// arrive: BodyTimeout plus its size at BodyMinRate bytes per second.
	BodyTimeout    time.Duration
	BodyMinRate    int64
	CORSOrigins    []string
	TrustedProxies []netip.Prefix
	LogLevel       string
	// ShutdownDelay is how long /readyz answers 503 before the listener
	// closes, so load balancers stop sending new requests first.
	ShutdownDelay time.Duration
	// DrainTimeout bounds how long in-flight calls may take to finish.
	DrainTimeout time.Duration
	// OpsAddr, when set, is where /metrics and Go's /debug/pprof profiles
	// are served, apart from the API port, which then has no /metrics.
	OpsAddr string
	// ReadyzRequireDatabase makes /readyz answer 503 while PostgreSQL is
	// unreachable. Off by default: one database blip would then take every
	// replica out of the load balancer at once.
	ReadyzRequireDatabase bool
	// MemoryLimit is the Go runtime's soft memory limit in bytes: 0 for
	// none, MemoryLimitAuto to derive it from the container's limit. It is
	// 0 when GOMEMLIMIT is set: the runtime has applied that already, and
	// it takes precedence.
	MemoryLimit int64

	DatabaseURL     string
	DBMaxOpenConns  int
	DBMaxIdleConns  int
	DBConnLifetime  time.Duration
	ValkeyURL       string
	JWTKeysPath     string
	JWTIssuer       string
	JWTAudience     string
	AccessTokenTTL  time.Duration
	RefreshTokenTTL time.Duration
	AgentTokenTTL   time.Duration

	RateLimitUserPerMinute  int
	RateLimitIPPerMinute    int
	RateLimitAgentPerMinute int

	WatchHeartbeat time.Duration

	AzureConnectionString string
	BlobContainer         string
	BlobDir               string
	// PublicURL is the externally reachable base URL of Parley, used for
	// signed URLs served by Parley itself (the directory blob store).
	PublicURL  string
	FileURLTTL time.Duration
	// FileContentTypes is the upload allow-list (empty: the built-in list).
	FileContentTypes []string

	LiveKitURL       string
	LiveKitPublicURL string
	LiveKitAPIKey    string
	LiveKitAPISecret string
	LiveKitAgentName string
	LiveKitTokenTTL  time.Duration

	// WebhookAllowHTTP lets outbound webhooks go to plain http URLs
	// (development and tests); otherwise only https.
	WebhookAllowHTTP bool
	// WebhookAllowedNetworks are networks outbound webhooks may reach
	// although loopback, private, link-local or otherwise not public.
	WebhookAllowedNetworks []netip.Prefix
	// WebhookTimeout bounds one delivery attempt, answer included.
	WebhookTimeout time.Duration
}

// Var describes one environment variable.
type Var struct {
	Name     string
	Default  string
	Help     string
	Required bool
	// missing, if set, follows "required but not set" in the error.
	missing string
	set     func(c *Config, v string) error
}

// Vars returns the variables Parley reads, in the order --help lists them.
func Vars() []Var { return vars }

var vars = []Var{
	{Name: "PARLEY_HTTP_ADDR", Default: ":8080", Help: "address to serve gRPC, gRPC-Web, Connect and HTTP on",
		set: func(c *Config, v string) error { c.HTTPAddr = v; return nil }},
	{Name: "PARLEY_MAX_REQUEST_BYTES", Default: "16777216", Help: "largest request body accepted (bytes)",
		set: func(c *Config, v string) error { return parseInt64(v, 1024, &c.MaxRequestBytes) }},
	{Name: "PARLEY_BODY_TIMEOUT", Default: "10s", Help: "a request body may take this long plus its size at PARLEY_BODY_MIN_RATE to arrive; slower ones are cut off (server streams are bound only until their request has arrived)",
		set: func(c *Config, v string) error { return parseDuration(v, 100*time.Millisecond, &c.BodyTimeout) }},
	{Name: "PARLEY_BODY_MIN_RATE", Default: "8192", Help: "slowest request body accepted once PARLEY_BODY_TIMEOUT has passed (bytes per second; 8192 lets a 10 MiB upload take 21 minutes)",
		set: func(c *Config, v string) error { return parseInt64(v, 1, &c.BodyMinRate) }},
	{Name: "PARLEY_CORS_ORIGINS", Help: "comma-separated browser origins allowed by CORS (empty: none; * for any)",
		set: func(c *Config, v string) error { c.CORSOrigins = splitList(v); return nil }},
	{Name: "PARLEY_TRUSTED_PROXIES", Help: "comma-separated CIDRs whose X-Forwarded-For is believed for the client IP",
		set: func(c *Config, v string) error { return parsePrefixes(v, &c.TrustedProxies) }},
	{Name: "PARLEY_LOG_LEVEL", Default: "info", Help: "debug, info, warn or error",
		set: func(c *Config, v string) error {
			switch strings.ToLower(v) {
			case "debug", "info", "warn", "error":
				c.LogLevel = strings.ToLower(v)
				return nil
			}
			return fmt.Errorf("want debug, info, warn or error, got %q", v)
		}},
	{Name: "PARLEY_SHUTDOWN_DELAY", Default: "5s", Help: "on SIGTERM, how long /readyz reports 503 before the listener closes",
		set: func(c *Config, v string) error { return parseDuration(v, 0, &c.ShutdownDelay) }},
	{Name: "PARLEY_DRAIN_TIMEOUT", Default: "20s", Help: "on SIGTERM, how long in-flight calls may take to finish",
		set: func(c *Config, v string) error { return parseDuration(v, time.Millisecond, &c.DrainTimeout) }},

	{Name: "PARLEY_READYZ_REQUIRE_DATABASE", Default: "false", Help: "true: /readyz answers 503 while PostgreSQL is unreachable (off: every replica would leave the load balancer over one database blip)",
		set: func(c *Config, v string) error { return parseBool(v, &c.ReadyzRequireDatabase) }},

	{Name: "PARLEY_MEMORY_LIMIT", Default: "auto", Help: "soft memory limit of the Go runtime, e.g. 450MiB (the GC works harder near it); auto: 90% of the container's memory limit, none without one; off: none. GOMEMLIMIT, if set, wins",
		set: func(c *Config, v string) error { return parseMemoryLimit(v, &c.MemoryLimit) }},
	{Name: "PARLEY_OPS_ADDR", Help: "if set, serve /metrics and Go's /debug/pprof profiles on this address, and /metrics no longer on PARLEY_HTTP_ADDR (keep it private, e.g. :9090 reached only by Prometheus)",
		set: func(c *Config, v string) error { c.OpsAddr = v; return nil }},
	{Name: "PARLEY_PPROF_ADDR", Help: "older name of PARLEY_OPS_ADDR",
		set: func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			if c.OpsAddr != "" && c.OpsAddr != v {
				return fmt.Errorf("is the older name of PARLEY_OPS_ADDR, which is set to %q; set only PARLEY_OPS_ADDR", c.OpsAddr)
			}
			c.OpsAddr = v
			return nil
		}},

	{Name: "DATABASE_URL", Required: true, Help: "PostgreSQL URL, e.g. postgres://user:pass@host:5432/parley",
		set: func(c *Config, v string) error { c.DatabaseURL = v; return nil }},
	{Name: "PARLEY_DB_MAX_OPEN_CONNS", Default: "16", Help: "connections per replica to PostgreSQL (mind max_connections × replicas)",
		set: func(c *Config, v string) error { return parseInt(v, 1, &c.DBMaxOpenConns) }},
	{Name: "PARLEY_DB_MAX_IDLE_CONNS", Default: "16", Help: "idle connections kept per replica",
		set: func(c *Config, v string) error { return parseInt(v, 0, &c.DBMaxIdleConns) }},
	{Name: "PARLEY_DB_CONN_LIFETIME", Default: "30m", Help: "recycle connections after this long",
		set: func(c *Config, v string) error { return parseDuration(v, 0, &c.DBConnLifetime) }},
	{Name: "VALKEY_URL", Default: "redis://127.0.0.1:6379/0", Help: "Valkey (or Redis) URL: cache, rate limits, revocations, new-message notifications",
		set: func(c *Config, v string) error { c.ValkeyURL = v; return nil }},
	{Name: "PARLEY_JWT_KEYS", Required: true, Help: "path to the private JWK set (first key signs, all verify); make one with `parley keys generate`",
		set: func(c *Config, v string) error { c.JWTKeysPath = v; return nil }},
	{Name: "PARLEY_JWT_ISSUER", Default: "parley", Help: "iss claim of access tokens",
		set: func(c *Config, v string) error { c.JWTIssuer = v; return nil }},
	{Name: "PARLEY_JWT_AUDIENCE", Default: "parley", Help: "aud claim of access tokens",
		set: func(c *Config, v string) error { c.JWTAudience = v; return nil }},
	{Name: "PARLEY_ACCESS_TOKEN_TTL", Default: "30m", Help: "lifetime of user access tokens",
		set: func(c *Config, v string) error { return parseDuration(v, time.Second, &c.AccessTokenTTL) }},
	{Name: "PARLEY_REFRESH_TOKEN_TTL", Default: "720h", Help: "lifetime of refresh tokens",
		set: func(c *Config, v string) error { return parseDuration(v, time.Second, &c.RefreshTokenTTL) }},
	{Name: "PARLEY_AGENT_TOKEN_TTL", Default: "15m", Help: "lifetime of agent access tokens",
		set: func(c *Config, v string) error { return parseDuration(v, time.Second, &c.AgentTokenTTL) }},

	{Name: "PARLEY_RATE_LIMIT_USER_PER_MINUTE", Default: "60", Help: "requests per minute per user",
		set: func(c *Config, v string) error { return parseRate(v, &c.RateLimitUserPerMinute) }},
	{Name: "PARLEY_RATE_LIMIT_IP_PER_MINUTE", Default: "100", Help: "requests per minute per client IP (every request)",
		set: func(c *Config, v string) error { return parseRate(v, &c.RateLimitIPPerMinute) }},
	{Name: "PARLEY_RATE_LIMIT_AGENT_PER_MINUTE", Default: "6000", Help: "requests per minute per agent",
		set: func(c *Config, v string) error { return parseRate(v, &c.RateLimitAgentPerMinute) }},

	{Name: "PARLEY_WATCH_HEARTBEAT", Default: "15s", Help: "interval of heartbeats on idle WatchMessages streams",
		set: func(c *Config, v string) error { return parseDuration(v, 10*time.Millisecond, &c.WatchHeartbeat) }},

	{Name: "AZURE_STORAGE_CONNECTION_STRING", Help: "Azure Blob connection string (with PARLEY_BLOB_CONTAINER); else PARLEY_BLOB_DIR is used",
		set: func(c *Config, v string) error { c.AzureConnectionString = v; return nil }},
	{Name: "PARLEY_BLOB_CONTAINER", Default: "parley", Help: "Azure Blob container for files",
		set: func(c *Config, v string) error { c.BlobContainer = v; return nil }},
	{Name: "PARLEY_BLOB_DIR", Default: "./.parley-dev/blobs", Help: "local directory store used when no Azure connection string is set",
		set: func(c *Config, v string) error { c.BlobDir = v; return nil }},
	{Name: "PARLEY_PUBLIC_URL", Default: "http://localhost:8080", Help: "externally reachable base URL of Parley (signed URLs of the directory store)",
		set: func(c *Config, v string) error { c.PublicURL = strings.TrimRight(v, "/"); return nil }},
	{Name: "PARLEY_FILE_URL_TTL", Default: "15m", Help: "lifetime of upload and download URLs (at most 15m)",
		set: func(c *Config, v string) error {
			if err := parseDuration(v, time.Second, &c.FileURLTTL); err != nil {
				return err
			}
			if c.FileURLTTL > 15*time.Minute {
				return errors.New("must be at most 15m")
			}
			return nil
		}},

	{Name: "PARLEY_FILE_CONTENT_TYPES", Help: "comma-separated upload allow-list, e.g. text/plain,audio/* (empty: built-in list)",
		set: func(c *Config, v string) error { c.FileContentTypes = splitList(v); return nil }},

	{Name: "LIVEKIT_URL", Default: "ws://127.0.0.1:7880", Help: "LiveKit server URL used by Parley",
		set: func(c *Config, v string) error { c.LiveKitURL = v; return nil }},
	{Name: "PARLEY_LIVEKIT_PUBLIC_URL", Help: "LiveKit URL handed to clients (default: LIVEKIT_URL)",
		set: func(c *Config, v string) error { c.LiveKitPublicURL = v; return nil }},
	// No defaults: LiveKit's development keys are public, and whoever holds
	// the secret can sign webhooks. Only `parley dev` uses them.
	{Name: "LIVEKIT_API_KEY", Required: true, missing: liveKitKeysMissing, Help: "LiveKit API key",
		set: func(c *Config, v string) error { c.LiveKitAPIKey = v; return nil }},
	{Name: "LIVEKIT_API_SECRET", Required: true, missing: liveKitKeysMissing, Help: "LiveKit API secret (it also verifies LiveKit's webhooks)",
		set: func(c *Config, v string) error { c.LiveKitAPISecret = v; return nil }},
	{Name: "PARLEY_LIVEKIT_AGENT_NAME", Help: "agent to dispatch into new rooms (empty: none)",
		set: func(c *Config, v string) error { c.LiveKitAgentName = v; return nil }},
	{Name: "PARLEY_LIVEKIT_TOKEN_TTL", Default: "1h", Help: "lifetime of LiveKit join tokens",
		set: func(c *Config, v string) error { return parseDuration(v, time.Second, &c.LiveKitTokenTTL) }},

	{Name: "PARLEY_WEBHOOK_ALLOW_HTTP", Default: "false", Help: "true: outbound webhooks may use plain http URLs (development and tests; otherwise https only)",
		set: func(c *Config, v string) error { return parseBool(v, &c.WebhookAllowHTTP) }},
	{Name: "PARLEY_WEBHOOK_ALLOWED_NETWORKS", Help: "comma-separated CIDRs outbound webhooks may reach although loopback, private, link-local or otherwise not public, e.g. 10.20.0.0/16 (empty: public addresses only, checked on each connection after DNS)",
		set: func(c *Config, v string) error { return parsePrefixes(v, &c.WebhookAllowedNetworks) }},
	{Name: "PARLEY_WEBHOOK_TIMEOUT", Default: "15s", Help: "longest one outbound webhook delivery attempt may take, answer included",
		set: func(c *Config, v string) error { return parseDuration(v, 100*time.Millisecond, &c.WebhookTimeout) }},
}

// liveKitKeysMissing says what to do about a missing LiveKit key or secret.
const liveKitKeysMissing = "set LIVEKIT_API_KEY and LIVEKIT_API_SECRET to your LiveKit server's API key and secret (only `parley dev` uses LiveKit's development keys)"

// MemoryLimitAuto is Config.MemoryLimit when the limit is to be derived
// from the container's memory limit.
const MemoryLimitAuto = memlimit.Auto

// Error names the variable whose value is wrong or missing.
type Error struct {
	Var string
	Err error
}

func (e *Error) Error() string { return fmt.Sprintf("config: %s: %v", e.Var, e.Err) }

func (e *Error) Unwrap() error { return e.Err }

// Load reads the configuration through getenv. The first wrong or missing
// variable is reported as an *Error.
func Load(getenv func(string) string) (Config, error) {
	var c Config
	for _, v := range vars {
		if err := v.load(&c, getenv); err != nil {
			return Config{}, err
		}
	}
	if c.LiveKitPublicURL == "" {
		c.LiveKitPublicURL = c.LiveKitURL
	}
	if c.OpsAddr != "" && c.OpsAddr == c.HTTPAddr {
		// Name the variable the operator set, which may be the older one.
		name := "PARLEY_OPS_ADDR"
		if strings.TrimSpace(getenv(name)) == "" {
			name = "PARLEY_PPROF_ADDR"
		}
		return Config{}, &Error{Var: name, Err: errors.New("must differ from PARLEY_HTTP_ADDR")}
	}
	if getenv("GOMEMLIMIT") != "" {
		c.MemoryLimit = 0
	}
	if c.DBMaxIdleConns > c.DBMaxOpenConns {
		c.DBMaxIdleConns = c.DBMaxOpenConns
	}
	return c, nil
}

// DatabaseURL reads DATABASE_URL alone, for the operational commands that
// need nothing but the database; a missing one is an *Error.
func DatabaseURL(getenv func(string) string) (string, error) {
	var c Config
	for _, v := range vars {
		if v.Name == "DATABASE_URL" {
			if err := v.load(&c, getenv); err != nil {
				return "", err
			}
		}
	}
	return c.DatabaseURL, nil
}

// load sets v's field of c from getenv, or from v's default; the variable
// missing or wrong is an *Error.
func (v Var) load(c *Config, getenv func(string) string) error {
	raw := strings.TrimSpace(getenv(v.Name))
	if raw == "" {
		if v.Required {
			msg := "required but not set"
			if v.missing != "" {
				msg += "; " + v.missing
			}
			return &Error{Var: v.Name, Err: errors.New(msg)}
		}
		raw = v.Default
	}
	if err := v.set(c, raw); err != nil {
		return &Error{Var: v.Name, Err: err}
	}
	return nil
}

// WriteHelp lists every variable with its default.
func WriteHelp(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range vars {
		def := v.Default
		switch {
		case v.Required:
			def = "(required)"
		case def == "":
			def = "(empty)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, def, v.Help)
	}
	return tw.Flush()
}

func parseBool(v string, dst *bool) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("want true or false, got %q", v)
	}
	*dst = b
	return nil
}

func parseInt(v string, min int, dst *int) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("want a whole number, got %q", v)
	}
	if n < min {
		return fmt.Errorf("must be at least %d, got %d", min, n)
	}
	*dst = n
	return nil
}

// maxRatePerMinute is the fastest rate the limiter can keep: one request
// per microsecond, the resolution of its clock in Valkey.
const maxRatePerMinute = 60_000_000

func parseRate(v string, dst *int) error {
	if err := parseInt(v, 1, dst); err != nil {
		return err
	}
	if *dst > maxRatePerMinute {
		return fmt.Errorf("must be at most %d per minute, got %d", maxRatePerMinute, *dst)
	}
	return nil
}

func parseInt64(v string, min int64, dst *int64) error {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return fmt.Errorf("want a whole number, got %q", v)
	}
	if n < min {
		return fmt.Errorf("must be at least %d, got %d", min, n)
	}
	*dst = n
	return nil
}

func parseDuration(v string, min time.Duration, dst *time.Duration) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("want a duration such as 30s or 15m, got %q", v)
	}
	if d < min {
		return fmt.Errorf("must be at least %v, got %v", min, d)
	}
	*dst = d
	return nil
}

// parseMemoryLimit reads auto, off, or a size in GOMEMLIMIT's notation: a
// whole number of bytes with an optional B, KiB, MiB, GiB or TiB suffix.
func parseMemoryLimit(v string, dst *int64) error {
	switch strings.ToLower(v) {
	case "auto":
		*dst = MemoryLimitAuto
		return nil
	case "off":
		*dst = 0
		return nil
	}
	num, mult := v, int64(1)
	for i, unit := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if n, ok := strings.CutSuffix(v, unit); ok {
			num, mult = n, 1<<(10*(i+1))
			break
		}
	}
	if mult == 1 {
		num = strings.TrimSuffix(v, "B")
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return fmt.Errorf("want auto, off or a size such as 450MiB, got %q", v)
	}
	if n*mult < 16<<20 {
		return fmt.Errorf("must be at least 16MiB, got %q", v)
	}
	*dst = n * mult
	return nil
}

func parsePrefixes(v string, dst *[]netip.Prefix) error {
	var out []netip.Prefix
	for _, s := range splitList(v) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			addr, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return fmt.Errorf("want CIDRs such as 10.0.0.0/8, got %q", s)
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		out = append(out, p.Masked())
	}
	*dst = out
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
