// Package shop is a domain that breaks the SQL and environment rules: the
// rule tests expect a report on each line marked "want" and on no other.
package shop

import (
	"os"
	env "os"
	"syscall"
)

const list = "SELECT id, name FROM items WHERE shop = $1" // want sql

var statements = []string{
	`INSERT INTO items (id) VALUES ($1)`, // want sql
	"update items set name = $1",         // not detected: in lower case it is also English
	"delete from items where id = $1",    // want sql
	"create database " + "shop_test",     // want sql
	"UPDATE items " + "SET name = $2",    // want sql
}

// English that reads like SQL is not SQL.
var messages = []string{
	"select a file from the list",
	"update the set of items",
	"created a database backup",
}

func Config() (string, bool, []string, string) {
	a := os.Getenv("SHOP_URL")                // want env
	_, b := os.LookupEnv("SHOP_DEBUG")        // want env
	c := env.Environ()                        // want env
	d, _ := syscall.Getenv("SHOP_TOKEN")      // want env
	return a + d, b, c, os.ExpandEnv("$HOME") // want env
}

// Hostname is not an environment read.
func Hostname() (string, error) { return os.Hostname() }
