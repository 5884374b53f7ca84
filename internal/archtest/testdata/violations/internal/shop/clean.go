package shop

// An identifier named os that is not the package is not the environment.
func shadow() string {
	type store struct{ Getenv string }
	os := store{}
	return os.Getenv
}
