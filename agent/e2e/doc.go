// Package e2e holds Ferry's end-to-end migration tests. They build the
// real binaries, run a one-node ferry-coordinator and a ferry-agent as
// processes, and migrate running TCG VMs from a real libvirtd over a
// loopback sshd. Nothing is faked; the tests need root, libvirtd, QEMU and
// OpenSSH (scripts/deps.sh installs them).
package e2e
