//go:build !linux

package localserver

import "syscall"

// setParentDeathSignal does nothing where the kernel has no parent-death
// signal: a killed caller may leave its servers running.
func setParentDeathSignal(*syscall.SysProcAttr, syscall.Signal) {}
