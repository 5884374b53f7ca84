package testenv

// ServerDirs returns the temporary directories of the servers this process
// started, for the test that checks Main removes them.
func ServerDirs() []string {
	var dirs []string
	for _, dir := range []string{pg.dir, shared.dir, azurite.dir} {
		if dir != "" {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}
