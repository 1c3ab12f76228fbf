// Package e2e holds Ferry's end-to-end migration tests. They build the
// real binaries, run a one-node ferry-coordinator and a ferry-agent as
// processes, and migrate running TCG VMs from a real libvirtd over a
// loopback sshd. Nothing is faked; the tests need root, libvirtd, QEMU and
// OpenSSH (scripts/deps.sh installs them).
//
// Every test builds a world of its own (random names, its own sshd, ports,
// network, cache and storage directories) and runs in parallel with the
// others (t.Parallel; four at once unless -parallel says otherwise, see
// TestMain): most of a test is waiting on VMs and jobs, and the suite must
// stay well under the CI budget. A test that boots a real guest or
// libguestfs's appliance under TCG takes a CPU for minutes and calls
// heavy(t) after t.Parallel: two such at a time. A test that needs the
// machine to itself must say why and not call t.Parallel.
package e2e
