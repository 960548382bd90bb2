package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// Namespace is the storage key prefix under which shared tokens live.
const Namespace = "upstream_oauth/tokens"

// Shared keeps a source's token in storage shared by several instances
// (Caddy's configured storage: file_system, Redis, …), so that they make one
// token request between them.
//
// The storage key and the lock name are a hash of the settings that say
// which token it is, none of them secret (see identity): they tell nothing
// of a secret, however fast one hashes guesses. The record is encrypted with
// AES-256-GCM under a key derived with Argon2id (memory-hard, see
// defaultKDF) from all the source's settings, secrets included, and a salt
// the record carries: testing a guess at a secret against it costs a
// derivation. Instances with the same identity but other secrets (a secret
// being rotated, a wrong password) find the same record and cannot read
// it: each treats it as unreadable and replaces it with a token of its own.
type Shared struct {
	key      string // storage key of the record
	lock     string // lock name
	material []byte // Argon2id's input: every setting, secrets included

	// Storage returns the storage to use now, nil when there is none: a
	// source outlives configs, and a config's storage may be closed once
	// the config is unloaded, so the caller resolves it on each use.
	Storage func() certmagic.Storage
	// StepTimeout bounds each storage call but the wait for the lock (a
	// read, a write, the release); a renewal while the token is still
	// valid allows less (see Source.stepBound). Default 3s.
	StepTimeout time.Duration
	// OnLookup, if set, is told the outcome of each lookup.
	OnLookup func(Lookup)

	keysMu sync.Mutex
	keys   []*sealKey // derived keys, most recently used first
	writer *sealKey   // the key new records are sealed with

	mu        sync.Mutex
	downUntil time.Time     // until then the storage is not tried
	downFor   time.Duration // how long the last failure keeps it untried; 0 while the storage works

	hung                         atomic.Int32 // storage calls given up on that have not returned
	skewLogged, unreadableLogged atomic.Bool
}

// Lookup is the outcome of a lookup of a usable token in shared storage.
type Lookup string

// Lookup outcomes.
const (
	LookupHit        Lookup = "hit"        // a usable token, taken
	LookupMiss       Lookup = "miss"       // none usable: this instance asks the provider
	LookupUnreadable Lookup = "unreadable" // a record that does not decrypt or parse: replaced
)

// Defaults and bounds of the storage steps.
const (
	DefaultStepTimeout = 3 * time.Second
	// staleLock is how long a lock held by an instance that died takes to
	// go stale: file_system 10s (certmagic), Redis 5s (caddy-storage-redis).
	staleLock = 10 * time.Second
	// minStep is the least time a storage call is given.
	minStep = 100 * time.Millisecond
	// downMin and downMax bound how long a failed storage is left untried:
	// twice as long after each failure in a row, then tried again.
	downMin = 2 * time.Second
	downMax = 30 * time.Second
	// skewTolerance is the clock difference a record may show before it is
	// logged as clock skew.
	skewTolerance = time.Second
)

// NewShared returns the Shared of the token source of cfg. Its storage key
// depends on cfg's identity alone (no secret); its records are sealed with
// all of cfg and secrets (what else the source proves itself with, such as
// the digest of a private key file). No key is derived until a record is
// read or written.
func NewShared(cfg grants.Config, secrets ...string) (*Shared, error) {
	id, err := storageID(cfg)
	if err != nil {
		return nil, err
	}
	all, err := json.Marshal(cfg) //nolint:gosec // G117: key material, never stored or shown
	if err != nil {
		return nil, err
	}
	material := append([]byte("upstream_oauth shared token v2\x00"), all...)
	for _, s := range secrets {
		if s != "" {
			material = append(append(material, 0), s...)
		}
	}
	return &Shared{
		key:      Namespace + "/" + id,
		lock:     "upstream_oauth_" + id,
		material: material,
	}, nil
}

// Key is the storage key of the record.
func (sh *Shared) Key() string { return sh.key }

// String names the record for logs, without any secret.
func (sh *Shared) String() string { return fmt.Sprintf("shared token %s", sh.key) }

func (sh *Shared) current() certmagic.Storage {
	if sh.Storage == nil {
		return nil
	}
	return sh.Storage()
}

func (sh *Shared) stepTimeout() time.Duration {
	if sh.StepTimeout > 0 {
		return sh.StepTimeout
	}
	return DefaultStepTimeout
}

// errNoStorage is returned by Load and Store when Storage gives none.
var errNoStorage = errors.New("no storage")

// Load reads the stored token as its writer recorded it (its times by the
// writer's clock): nil, nil when there is none; an error when the storage
// fails or the record is unreadable.
func (sh *Shared) Load(ctx context.Context) (*grants.Token, error) {
	st := sh.current()
	if st == nil {
		return nil, errNoStorage
	}
	data, err := sh.read(ctx, st, sh.stepTimeout())
	if err != nil || data == nil {
		return nil, err
	}
	return sh.open(ctx, data)
}

// Store seals tok and writes it to the storage.
func (sh *Shared) Store(ctx context.Context, tok *grants.Token) error {
	st := sh.current()
	if st == nil {
		return errNoStorage
	}
	return sh.write(ctx, st, tok, sh.stepTimeout())
}

// call runs one storage call bounded by d, even for a storage that does
// not heed its context (file_system on a mount that hangs): the call is
// then given up on and left to return in the background. While one given
// up on has not returned, no other is made: the storage counts as failing.
func (sh *Shared) call(ctx context.Context, d time.Duration, f func(context.Context) error) error {
	if sh.hung.Load() > 0 {
		return errors.New("an earlier storage call has not returned")
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	done := make(chan error, 1)
	var mu sync.Mutex
	finished, abandoned := false, false
	go func() {
		err := f(ctx)
		mu.Lock()
		finished = true
		if abandoned {
			sh.hung.Add(-1)
		}
		mu.Unlock()
		done <- err
		cancel() // after finished is set: a select that sees ctx done then sees it
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		if finished { // it returned meanwhile
			return <-done
		}
		abandoned = true
		sh.hung.Add(1)
		return fmt.Errorf("no answer from the storage within %v: %w", d, ctx.Err())
	}
}

// read loads the record's bytes: nil with no error when there is none.
func (sh *Shared) read(ctx context.Context, st certmagic.Storage, d time.Duration) ([]byte, error) {
	var data []byte
	err := sh.call(ctx, d, func(ctx context.Context) error {
		var err error
		data, err = st.Load(ctx, sh.key)
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// write seals tok and stores it.
func (sh *Shared) write(ctx context.Context, st certmagic.Storage, tok *grants.Token, d time.Duration) error {
	data, err := sh.seal(ctx, tok)
	if err != nil {
		return err
	}
	return sh.call(ctx, d, func(ctx context.Context) error { return st.Store(ctx, sh.key, data) })
}

// stored is what a lookup found.
type stored struct {
	tok        *grants.Token // as written; nil when none or unreadable
	unreadable error         // why the record could not be read, if so
}

// lookup reads and opens the record. err is the storage's (or ctx's).
func (s *Source) lookup(sh *Shared, st certmagic.Storage, d time.Duration, kdf context.Context) (stored, error) {
	data, err := sh.read(s.ctx, st, d)
	if err != nil || data == nil {
		return stored{}, err
	}
	tok, err := sh.open(kdf, data)
	if errors.Is(err, errUnreadable) {
		if sh.unreadableLogged.CompareAndSwap(false, true) {
			s.log.Warn("shared token record is unreadable; replacing it with a new token",
				zap.String("key", sh.key), zap.String("reason", err.Error()))
		}
		return stored{unreadable: err}, nil
	}
	if err != nil {
		return stored{}, err
	}
	return stored{tok: tok}, nil
}

// take is a stored token as this instance may use it: trusted for no longer
// than its lifetime from now, whatever the writer's clock said, with its
// expiry on this instance's monotonic clock. A record whose obtained time
// lies in the future, or whose expiry lies further ahead than its lifetime,
// shows that the writer's clock and this one differ: logged once.
func (s *Source) take(sh *Shared, t *grants.Token, now time.Time) *grants.Token {
	ahead := max(t.Obtained.Sub(now), 0) // the writer's clock is at least this far ahead
	left := t.Expiry.Sub(now) - ahead
	skew := max(ahead, t.Expiry.Sub(now)-t.Lifetime)
	if skew > skewTolerance && sh.skewLogged.CompareAndSwap(false, true) {
		s.log.Warn("clock skew: a shared token record was written by an instance whose clock differs from this one's; "+
			"trusting the token for at most its lifetime from now (synchronize the instances' clocks)",
			zap.String("key", sh.key), zap.Duration("skew", skew),
			zap.Time("record_obtained", t.Obtained), zap.Time("record_expiry", t.Expiry))
	}
	left = min(left, t.Lifetime)
	out := *t
	out.Expiry = now.Add(left) // now carries the monotonic reading
	out.Obtained = out.Expiry.Add(-t.Lifetime)
	return &out
}

// usable is the stored token if this instance may take it now, else nil.
func (s *Source) usable(sh *Shared, t *grants.Token, a attempt) *grants.Token {
	if t == nil || a.avoids(t) {
		return nil
	}
	now := time.Now()
	tok := s.take(sh, t, now)
	if !now.Before(tok.Expiry.Add(-s.ahead(tok))) {
		return nil
	}
	return tok
}

// stepBound bounds one storage call of an attempt: StepTimeout, and while a
// valid token is held (a renewal) a quarter of the time it has left, so
// that a storage that fails slowly leaves time for a token request of this
// instance's own before the token expires.
func (s *Source) stepBound(sh *Shared, validUntil time.Time) time.Duration {
	d := sh.stepTimeout()
	if !validUntil.IsZero() {
		d = min(d, max(time.Until(validUntil)/4, minStep))
	}
	return d
}

// lockWait bounds the wait for the shared lock by what its holder may take
// before it lets go: the refresh_token grant and the configured grant, each
// bounded by Timeout; five storage steps, each bounded by StepTimeout (the
// read after taking the lock and a key derivation it may need, the claim of
// a refresh token, the write, the release); and, should the holder die,
// the time its lock takes to go stale. A waiter does not give up on a live
// holder, and so makes no token request of its own while one is in flight.
func (s *Source) lockWait(sh *Shared) time.Duration {
	return 2*s.opts.Timeout + 5*sh.stepTimeout() + staleLock
}

// obtainShared gets a token through the shared storage: a usable token
// stored by another instance, else — holding the storage's lock, so one
// instance renews while the others wait and then read — a new one from the
// provider, which it stores. ok is false when the storage failed or is
// remembered as failing: the caller then fetches on its own.
//
// a.refresh is a refresh token this instance obtained on its own and never
// stored ("" if none). Under the lock, the record's refresh token (the
// fleet's newest) is used first, after the record is stored without it: an
// instance that dies after redeeming it leaves none behind for another to
// replay against a provider that detects reuse. When its grant fails in a
// way that leaves it good for another try (see Source.fetch), this
// instance keeps it for its next attempt, as its own: the record no longer
// holds it. c is the refresh token for the next attempt (see obtain).
func (s *Source) obtainShared(sh *Shared, a attempt) (tok *grants.Token, res Result, c carry, ok bool) {
	st := sh.current()
	if st == nil || sh.isDown(time.Now()) {
		return nil, res, c, false
	}
	hit := func(t *grants.Token) (*grants.Token, Result, carry, bool) {
		sh.restored(s)
		if sh.OnLookup != nil {
			sh.OnLookup(LookupHit)
		}
		s.log.Debug("token taken from shared storage", zap.Time("expires", t.Expiry))
		return t, Result{Source: s.opts.Name, Token: t, Shared: true}, carry{refresh: t.RefreshToken}, true
	}
	untried := carry{refresh: a.refresh, private: true} // a.refresh is private, or ""
	canceled := func() (*grants.Token, Result, carry, bool) {
		return nil, Result{Source: s.opts.Name, Err: s.ctx.Err()}, untried, true
	}

	found, err := s.lookup(sh, st, s.stepBound(sh, a.validUntil), s.ctx)
	if err != nil {
		if s.ctx.Err() != nil {
			return canceled()
		}
		sh.fail(s, "reading the shared token", err)
		return nil, res, c, false
	}
	if t := s.usable(sh, found.tok, a); t != nil {
		return hit(t)
	}
	// The key new records are sealed with, derived (if need be) before
	// taking the lock, which is then held for no derivation of it.
	if _, err := sh.writeKey(s.ctx); err != nil {
		return nil, Result{Source: s.opts.Name, Err: err}, untried, true
	}

	lockCtx, cancelLock := context.WithTimeout(s.ctx, s.lockWait(sh))
	defer cancelLock()
	if err := st.Lock(lockCtx, sh.lock); err != nil {
		if s.ctx.Err() != nil {
			return canceled()
		}
		sh.fail(s, "taking the shared lock", err)
		return nil, res, c, false
	}
	defer func() {
		err := sh.call(context.Background(), sh.stepTimeout(), func(ctx context.Context) error { return st.Unlock(ctx, sh.lock) })
		if err != nil {
			s.log.Warn("releasing the shared lock failed; it goes stale on its own", zap.Error(err))
		}
	}()
	// Another instance may have renewed while this one waited for the lock.
	step := s.stepBound(sh, a.validUntil)
	kdfCtx, cancelKDF := context.WithTimeout(s.ctx, step)
	found, err = s.lookup(sh, st, step, kdfCtx)
	cancelKDF()
	if err != nil {
		if s.ctx.Err() != nil {
			return canceled()
		}
		sh.fail(s, "reading the shared token", err)
		return nil, res, c, false
	}
	if t := s.usable(sh, found.tok, a); t != nil {
		return hit(t)
	}
	if sh.OnLookup != nil {
		if found.unreadable != nil {
			sh.OnLookup(LookupUnreadable)
		} else {
			sh.OnLookup(LookupMiss)
		}
	}
	refresh := a.refresh
	if t := found.tok; t != nil && t.RefreshToken != "" && t.AccessToken != a.retired {
		claimed := *t
		claimed.RefreshToken = ""
		if err := sh.write(s.ctx, st, &claimed, s.stepBound(sh, a.validUntil)); err != nil {
			sh.fail(s, "claiming the shared refresh token", err)
			return nil, res, c, false
		}
		refresh = t.RefreshToken
	}
	tok, res, keep := s.fetch(refresh)
	if res.Err != nil {
		return nil, res, outcome(tok, res, keep, true), true
	}
	if err := sh.write(s.ctx, st, tok, s.stepBound(sh, a.validUntil)); err != nil {
		sh.fail(s, "storing the shared token", err)
	} else {
		sh.restored(s)
	}
	return tok, res, outcome(tok, res, keep, false), true
}

// isDown reports whether the storage failed recently enough to be left
// untried.
func (sh *Shared) isDown(now time.Time) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return now.Before(sh.downUntil)
}

// fail notes a storage failure: logged once per outage, and the storage
// left untried for a while (downMin, doubling with each failure in a row up
// to downMax), so that renewals do not each pay for it.
func (sh *Shared) fail(s *Source, what string, err error) {
	sh.mu.Lock()
	first := sh.downFor == 0
	sh.downFor = min(max(2*sh.downFor, downMin), downMax)
	sh.downUntil = time.Now().Add(sh.downFor)
	retry := sh.downFor
	sh.mu.Unlock()
	if first {
		s.log.Warn("shared storage failed; fetching tokens on our own until it is back",
			zap.String("during", what), zap.Error(err), zap.Duration("next_try_in", retry))
	}
}

// restored logs the end of an outage.
func (sh *Shared) restored(s *Source) {
	sh.mu.Lock()
	was := sh.downFor > 0
	sh.downFor, sh.downUntil = 0, time.Time{}
	sh.mu.Unlock()
	if was {
		s.log.Info("shared storage is back; sharing tokens again")
	}
}
