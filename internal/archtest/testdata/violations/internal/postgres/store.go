// Package postgres may hold SQL.
package postgres

const list = "SELECT id FROM items"
