package cache

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// Namespace is the storage key prefix under which shared tokens live.
const Namespace = "upstream_oauth/tokens"

// Shared keeps a source's token in storage shared by several instances
// (Caddy's configured storage: file_system, Redis, …), so that they make one
// token request between them. The record is encrypted with AES-256-GCM under
// a key derived (HKDF-SHA256) from the source's own settings, secrets
// included: the storage alone reveals no token, and instances with other
// credentials can neither read nor find it. Its storage key is derived the
// same way and holds no secret.
type Shared struct {
	key  string // storage key of the record
	lock string // lock name
	aead cipher.AEAD

	// Storage returns the storage to use now, nil when there is none: a
	// source outlives configs, and a config's storage may be closed once
	// the config is unloaded, so the caller resolves it on each use.
	Storage func() certmagic.Storage
	// LockWait bounds the wait for the lock: long enough for a lock held by
	// an instance that died to go stale (file_system: 10s; Redis: 5s).
	LockWait time.Duration
	// OnLookup, if set, is told whether a lookup found a usable token.
	OnLookup func(hit bool)

	mu       sync.Mutex
	degraded bool // storage failed last time: fetching on our own
}

// NewShared derives the record's key, name and cipher from material, which
// must hold every setting that shapes the token, secrets included.
func NewShared(material []byte) (*Shared, error) {
	derive := func(info string, n int) ([]byte, error) {
		return hkdf.Key(sha256.New, material, []byte("upstream_oauth shared token v1"), info, n)
	}
	encKey, err := derive("encryption", 32)
	if err != nil {
		return nil, err
	}
	name, err := derive("storage key", 16)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(encKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	id := hex.EncodeToString(name)
	return &Shared{
		key:      Namespace + "/" + id,
		lock:     "upstream_oauth_" + id,
		aead:     aead,
		LockWait: 30 * time.Second,
	}, nil
}

// Key is the storage key of the record.
func (sh *Shared) Key() string { return sh.key }

func (sh *Shared) current() certmagic.Storage {
	if sh.Storage == nil {
		return nil
	}
	return sh.Storage()
}

// record is the stored (then encrypted) form of a token.
type record struct {
	AccessToken  string        `json:"access_token"`
	TokenType    string        `json:"token_type,omitempty"`
	RefreshToken string        `json:"refresh_token,omitempty"`
	Scope        string        `json:"scope,omitempty"`
	Lifetime     time.Duration `json:"lifetime"`
	Obtained     time.Time     `json:"obtained"`
	Expiry       time.Time     `json:"expiry"`
}

// seal encrypts tok: version byte, nonce, ciphertext; the storage key is
// authenticated too, so a record cannot be moved under another key.
func (sh *Shared) seal(tok *grants.Token) ([]byte, error) {
	plain, err := json.Marshal(record{ //nolint:gosec // G117: the token is what is stored, and it is encrypted below
		AccessToken: tok.AccessToken, TokenType: tok.TokenType, RefreshToken: tok.RefreshToken,
		Scope: tok.Scope, Lifetime: tok.Lifetime, Obtained: tok.Obtained, Expiry: tok.Expiry,
	})
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+sh.aead.NonceSize(), 1+sh.aead.NonceSize()+len(plain)+sh.aead.Overhead())
	out[0] = 1
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return sh.aead.Seal(out, out[1:], plain, []byte(sh.key)), nil //nolint:gosec // G407: the nonce is random (rand.Read above)
}

// errUnreadable marks a record that does not decrypt or parse: it is
// ignored, and replaced by the next token obtained.
var errUnreadable = errors.New("stored token record is unreadable")

func (sh *Shared) open(data []byte) (*grants.Token, error) {
	n := sh.aead.NonceSize()
	if len(data) < 1+n+sh.aead.Overhead() || data[0] != 1 {
		return nil, errUnreadable
	}
	plain, err := sh.aead.Open(nil, data[1:1+n], data[1+n:], []byte(sh.key))
	if err != nil {
		return nil, errUnreadable
	}
	var r record
	if json.Unmarshal(plain, &r) != nil || r.AccessToken == "" || r.Lifetime <= 0 {
		return nil, errUnreadable
	}
	return &grants.Token{
		AccessToken: r.AccessToken, TokenType: r.TokenType, RefreshToken: r.RefreshToken,
		Scope: r.Scope, Lifetime: r.Lifetime, Obtained: r.Obtained, Expiry: r.Expiry,
	}, nil
}

// load reads the record: nil with no error when there is none or it is
// unreadable.
func (sh *Shared) load(ctx context.Context, st certmagic.Storage) (*grants.Token, error) {
	data, err := st.Load(ctx, sh.key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	tok, err := sh.open(data)
	if err != nil {
		return nil, nil
	}
	return tok, nil
}

// obtainShared gets a token through the shared storage: a usable token
// stored by another instance, else — holding the storage's lock, so one
// instance renews while the others wait and then read — a new one from the
// provider, which it stores. ok is false when the storage failed: the caller
// then fetches on its own.
func (s *Source) obtainShared(sh *Shared, refresh string, avoid map[string]bool) (tok *grants.Token, res Result, ok bool) {
	st := sh.current()
	if st == nil {
		return nil, res, false
	}
	usable := func(t *grants.Token) bool {
		return t != nil && !avoid[t.AccessToken] && time.Now().Before(t.Expiry.Add(-s.ahead(t)))
	}
	hit := func(t *grants.Token) (*grants.Token, Result, bool) {
		sh.restored(s)
		if sh.OnLookup != nil {
			sh.OnLookup(true)
		}
		s.log.Debug("token taken from shared storage", zap.Time("expires", t.Expiry))
		return t, Result{Source: s.opts.Name, Token: t, Shared: true}, true
	}

	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
	defer cancel()
	stored, err := sh.load(ctx, st)
	if err != nil {
		sh.fail(s, "reading the shared token", err)
		return nil, res, false
	}
	if usable(stored) {
		return hit(stored)
	}

	lockCtx, cancelLock := context.WithTimeout(s.ctx, sh.LockWait)
	defer cancelLock()
	if err := st.Lock(lockCtx, sh.lock); err != nil {
		if s.ctx.Err() != nil {
			return nil, Result{Source: s.opts.Name, Err: s.ctx.Err()}, true
		}
		sh.fail(s, "taking the shared lock", err)
		return nil, res, false
	}
	defer func() {
		uctx, ucancel := context.WithTimeout(context.Background(), s.opts.Timeout)
		defer ucancel()
		if err := st.Unlock(uctx, sh.lock); err != nil {
			s.log.Warn("releasing the shared lock failed", zap.Error(err))
		}
	}()
	// Another instance may have renewed while this one waited for the lock.
	ctx2, cancel2 := context.WithTimeout(s.ctx, s.opts.Timeout)
	defer cancel2()
	if stored, err = sh.load(ctx2, st); err != nil {
		sh.fail(s, "reading the shared token", err)
		return nil, res, false
	}
	if usable(stored) {
		return hit(stored)
	}
	if sh.OnLookup != nil {
		sh.OnLookup(false)
	}
	if stored != nil && stored.RefreshToken != "" && !avoid[stored.AccessToken] {
		refresh = stored.RefreshToken // the fleet's newest refresh token
	}
	tok, res = s.fetch(refresh)
	if res.Err != nil {
		return nil, res, true
	}
	data, err := sh.seal(tok)
	if err == nil {
		err = st.Store(ctx2, sh.key, data)
	}
	if err != nil {
		sh.fail(s, "storing the shared token", err)
	} else {
		sh.restored(s)
	}
	return tok, res, true
}

// fail logs a storage failure once per outage.
func (sh *Shared) fail(s *Source, what string, err error) {
	sh.mu.Lock()
	first := !sh.degraded
	sh.degraded = true
	sh.mu.Unlock()
	if first {
		s.log.Warn("shared storage failed; fetching tokens on our own until it is back",
			zap.String("during", what), zap.Error(err))
	}
}

// restored logs the end of an outage.
func (sh *Shared) restored(s *Source) {
	sh.mu.Lock()
	was := sh.degraded
	sh.degraded = false
	sh.mu.Unlock()
	if was {
		s.log.Info("shared storage is back; sharing tokens again")
	}
}

// String names the record for logs, without any secret.
func (sh *Shared) String() string { return fmt.Sprintf("shared token %s", sh.key) }
