// Package config may read the environment.
package config

import "os"

func Load() string { return os.Getenv("SHOP_URL") }
