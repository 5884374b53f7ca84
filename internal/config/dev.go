package config

import "path/filepath"

// DevDir keeps what `parley dev` makes for itself: the JWK set, blobs and
// the data of the servers it starts.
const DevDir = ".parley-dev"

// devDefaults are the settings `parley dev` uses for whatever the environment
// leaves unset: a generated key, LiveKit's --dev keys, and a browser origin
// for the example web app.
var devDefaults = map[string]string{
	"PARLEY_JWT_KEYS":     filepath.Join(DevDir, "jwks.json"),
	"PARLEY_BLOB_DIR":     filepath.Join(DevDir, "blobs"),
	"PARLEY_CORS_ORIGINS": "http://localhost:5173,http://127.0.0.1:5173",
	"LIVEKIT_API_KEY":     "devkey",
	"LIVEKIT_API_SECRET":  "secret",
	"PARLEY_LOG_LEVEL":    "info",
	// A developer's Ctrl-C should not wait for a load balancer.
	"PARLEY_SHUTDOWN_DELAY": "0s",
	"PARLEY_DRAIN_TIMEOUT":  "5s",
}

// Dev is what `parley dev` learns from the environment besides its Config.
type Dev struct {
	// DatabaseSet and ValkeySet report whether DATABASE_URL and VALKEY_URL
	// name the servers; where not, dev uses or starts its own.
	DatabaseSet, ValkeySet bool
	// LiveKitDevKeys reports whether the LiveKit key and secret are
	// LiveKit's public development keys, with which anyone can sign
	// webhooks.
	LiveKitDevKeys bool
}

// LoadDev is Load for `parley dev`: whatever the environment leaves unset
// takes dev's defaults, DATABASE_URL and VALKEY_URL those given.
func LoadDev(getenv func(string) string, databaseURL, valkeyURL string) (Config, Dev, error) {
	dev := Dev{DatabaseSet: getenv("DATABASE_URL") != "", ValkeySet: getenv("VALKEY_URL") != ""}
	c, err := Load(func(k string) string {
		if v := getenv(k); v != "" {
			return v
		}
		switch k {
		case "DATABASE_URL":
			return databaseURL
		case "VALKEY_URL":
			return valkeyURL
		}
		return devDefaults[k]
	})
	if err != nil {
		return Config{}, Dev{}, err
	}
	dev.LiveKitDevKeys = c.LiveKitAPIKey == devDefaults["LIVEKIT_API_KEY"] && c.LiveKitAPISecret == devDefaults["LIVEKIT_API_SECRET"]
	return c, dev, nil
}
