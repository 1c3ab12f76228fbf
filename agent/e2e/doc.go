// Package e2e holds Ferry's end-to-end migration tests. They build the
// real binaries, run a one-node ferry-coordinator and a ferry-agent as
// processes, and migrate running TCG VMs from a real libvirtd over a
// loopback sshd. Nothing is faked; the tests need root, libvirtd, QEMU and
// OpenSSH (scripts/deps.sh installs them).
//
// Every test builds a world of its own (random names, its own sshd, ports,
// network, cache and storage directories) and runs in parallel with the
// others (t.Parallel; go test runs GOMAXPROCS of them at once): most of a
// test is waiting on VMs and jobs, and the suite must stay well under the
// CI budget. A test that needs the machine to itself must say why and not
// call t.Parallel.
package e2e
