// Command app hands os.Getenv to run from main, which is allowed, and run
// hands it on to config; any other read is not.
package main

import (
	"os"

	"example.com/shop/internal/config"
)

func main() { os.Exit(run(os.Getenv)) }

func run(getenv func(string) string) int {
	_ = os.Getenv("SHOP_URL") // want env
	lookup := os.Getenv       // want env: outside main
	_ = lookup
	return len(getenv("SHOP_URL")) + len(config.LoadFrom(getenv)) // want env
}
