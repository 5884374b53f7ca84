package localserver

import "syscall"

// setParentDeathSignal makes the kernel send sig to the server when the
// calling process dies, so a crashed or killed caller leaves no server
// behind.
func setParentDeathSignal(attr *syscall.SysProcAttr, sig syscall.Signal) { attr.Pdeathsig = sig }
