// Package config may read the environment.
package config

import "os"

func Load() string { return os.Getenv("SHOP_URL") }

// LoadFrom reads through the getenv main handed down.
func LoadFrom(getenv func(string) string) string { return getenv("SHOP_URL") }
