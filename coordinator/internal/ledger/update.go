package ledger

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/ledger/v1"
	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// UpdateResource applies an UpdateResource command: the fields named in
// its paths take the values of the resource it carries, the rest of the
// stored resource stays, update_time is stamped (a job's own update_time
// says when its state last changed, and stays). It answers the name.
func (l *Ledger) UpdateResource(u *ledgerv1.UpdateResource, now time.Time) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.updateResource(u, now, true)
}

// updateRefusal is UpdateResource's refusal: everything it checks, with
// nothing changed; l.mu is read-locked.
func (l *Ledger) updateRefusal(u *ledgerv1.UpdateResource) error {
	_, err := l.updateResource(u, time.Time{}, false)
	return err
}

func (l *Ledger) updateResource(u *ledgerv1.UpdateResource, now time.Time, store bool) ([]string, error) {
	paths, etag := u.GetPaths(), u.GetEtag()
	switch r := u.GetResource().(type) {
	case *ledgerv1.UpdateResource_MigrationServer:
		ms, err := update(l, l.servers, "migration server", r.MigrationServer, paths, etag, now, store, nil)
		if err == nil && store && l.serverObserver != nil && touches(paths, "upstream_bits_per_second", "downstream_bits_per_second") {
			l.serverObserver(clone(ms))
		}
		return names(ms, err)
	case *ledgerv1.UpdateResource_Source:
		return names(update(l, l.sources, "source", r.Source, paths, etag, now, store, l.checkSourceUpdate(paths)))
	case *ledgerv1.UpdateResource_Credential:
		return l.updateCredential(r.Credential, paths, etag, now, store)
	case *ledgerv1.UpdateResource_Cluster:
		return names(update(l, l.clusters, "cluster", r.Cluster, paths, etag, now, store, nil))
	case *ledgerv1.UpdateResource_PrimaryStorage:
		return names(update(l, l.storages, "primary storage", r.PrimaryStorage, paths, etag, now, store, nil))
	case *ledgerv1.UpdateResource_L3Network:
		n, err := update(l, l.networks, "L3 network", r.L3Network, paths, etag, now, store, l.checkNetworkUpdate)
		if err == nil && store {
			l.freed++ // the range may have moved: allocators forget their hints
		}
		return names(n, err)
	case *ledgerv1.UpdateResource_MigrationJob:
		for _, p := range paths {
			if p != "display_name" && p != "description" {
				return nil, fmt.Errorf("%w: a job's %s cannot be updated", ErrFailedPrecondition, p)
			}
		}
		old := l.jobs[r.MigrationJob.GetName()]
		j, err := update(l, l.jobs, "migration job", r.MigrationJob, paths, etag, time.Time{}, store, nil)
		if err == nil && store {
			cur := l.jobs[j.GetName()]
			l.stored(old, cur) // the indexes hold the stored job itself
			l.notify(cur, false)
		}
		return names(j, err)
	}
	return nil, fmt.Errorf("%w: update_resource without a resource", ErrUnknownCommand)
}

func names[T named](v T, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	return []string{v.GetName()}, nil
}

type etaggedNamed interface {
	etagged
	GetName() string
}

// update changes the stored resource of in's name in m; check, when set,
// sees the stored resource and the changed one before it is stored. A
// zero now leaves update_time alone.
func update[T etaggedNamed](l *Ledger, m map[string]T, what string, in T, paths []string, etag string, now time.Time, store bool, check func(old, changed T) error) (T, error) {
	var zero T
	name := in.GetName()
	old, ok := m[name]
	if !ok {
		return zero, fmt.Errorf("%s %s: %w", what, name, ErrNotFound)
	}
	if err := checkETag(what+" "+name, old, etag); err != nil {
		return zero, err
	}
	changed := clone(old)
	if err := CopyPaths(changed, in, paths); err != nil {
		return zero, fmt.Errorf("%w: %s %s: %v", ErrFailedPrecondition, what, name, err)
	}
	if check != nil {
		if err := check(old, changed); err != nil {
			return zero, err
		}
	}
	if !store {
		return changed, nil
	}
	if !now.IsZero() {
		r := changed.ProtoReflect()
		if fd := r.Descriptor().Fields().ByName("update_time"); fd != nil {
			r.Set(fd, protoreflect.ValueOfMessage(timestamppb.New(now).ProtoReflect()))
		}
	}
	m[name] = changed
	return clone(changed), nil
}

// CopyPaths sets the fields of dst named by paths to their values in src
// (cleared where src has none). A path is a field name, or message field
// names joined by dots down to the field.
func CopyPaths(dst, src proto.Message, paths []string) error {
	src = proto.Clone(src)
	for _, p := range paths {
		d, s := dst.ProtoReflect(), src.ProtoReflect()
		parts := strings.Split(p, ".")
		for i, part := range parts {
			fd := d.Descriptor().Fields().ByName(protoreflect.Name(part))
			if fd == nil {
				return fmt.Errorf("%s has no field %q", d.Descriptor().Name(), p)
			}
			if i == len(parts)-1 {
				if s.Has(fd) {
					d.Set(fd, s.Get(fd))
				} else {
					d.Clear(fd)
				}
				break
			}
			if fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
				return fmt.Errorf("%q: %s is not a message", p, part)
			}
			d, s = d.Mutable(fd).Message(), s.Get(fd).Message()
		}
	}
	return nil
}

// touches says whether paths names any of fields or a field below them.
func touches(paths []string, fields ...string) bool {
	return slices.ContainsFunc(paths, func(p string) bool {
		return slices.ContainsFunc(fields, func(f string) bool { return p == f || strings.HasPrefix(p, f+".") || strings.HasPrefix(f, p+".") })
	})
}

// checkSourceUpdate checks that the credentials a changed source names
// exist, and forgets the host key observed at a KVM address that is no
// longer the one the source names (or under a key no longer pinned).
func (l *Ledger) checkSourceUpdate(paths []string) func(old, changed *ferryv1.Source) error {
	return func(old, changed *ferryv1.Source) error {
		for _, c := range sourceCredentials(changed) {
			if _, ok := l.credentials[c]; !ok {
				return fmt.Errorf("credential %s: %w", c, ErrNotFound)
			}
		}
		if k := changed.GetKvm(); k != nil && touches(paths, "kvm.address", "kvm.ssh_port", "kvm.host_key") {
			o := old.GetKvm()
			if k.GetAddress() != o.GetAddress() || k.GetSshPort() != o.GetSshPort() || k.GetHostKey() != o.GetHostKey() {
				k.ObservedHostKey = ""
			}
		}
		return nil
	}
}

// updateCredential changes a credential's display name and, with secret
// in paths, its sealed secret and fingerprint; the type stays.
func (l *Ledger) updateCredential(in *ledgerv1.SealedCredential, paths []string, etag string, now time.Time, store bool) ([]string, error) {
	name := in.GetCredential().GetName()
	old, ok := l.credentials[name]
	if !ok {
		return nil, fmt.Errorf("credential %s: %w", name, ErrNotFound)
	}
	if err := checkETag("credential "+name, old.GetCredential(), etag); err != nil {
		return nil, err
	}
	changed := clone(old)
	for _, p := range paths {
		switch p {
		case "display_name":
			changed.Credential.DisplayName = in.GetCredential().GetDisplayName()
		case "secret":
			if len(in.GetSealedSecret()) == 0 {
				return nil, fmt.Errorf("%w: credential %s: a new secret without its sealed value", ErrFailedPrecondition, name)
			}
			changed.SealedSecret = slices.Clone(in.GetSealedSecret())
			changed.Credential.Fingerprint = in.GetCredential().GetFingerprint()
		default:
			return nil, fmt.Errorf("%w: a credential's %s cannot be updated", ErrFailedPrecondition, p)
		}
	}
	if !store {
		return []string{name}, nil
	}
	changed.Credential.Secret = ""
	changed.Credential.UpdateTime = timestamppb.New(now)
	l.credentials[name] = changed
	return []string{name}, nil
}

// checkNetworkUpdate keeps every address held on the network (by a job
// that is not FAILED or CANCELLED, or a reservation) inside the changed
// allocation range, and the gateway off them.
func (l *Ledger) checkNetworkUpdate(old, changed *ferryv1.L3Network) error {
	_, err := HeldConflict(changed, l.usedAddresses(old.GetName()))
	return err
}
