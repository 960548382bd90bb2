package cache

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// A shared token is stored as a record of this layout (version 2):
//
//	0      version (2)
//	1      key derivation: 1 = Argon2id
//	2      Argon2id time (passes)
//	3      Argon2id threads
//	4..7   Argon2id memory in KiB, big-endian
//	8..23  salt (random, 16 bytes)
//	24..35 AES-256-GCM nonce (random, 12 bytes)
//	36..   AES-256-GCM ciphertext of the token (JSON), then its tag
//
// The AES key is Argon2id(every setting of the source, secrets included;
// salt). The storage key and bytes 0..23 are authenticated with the
// ciphertext, so a record cannot be moved under another key nor its
// parameters changed. Version 1 (before the key derivation was
// memory-hard) is not read: such a record is unreadable, and replaced.
const (
	recordVersion = 2
	kdfArgon2id   = 1
	saltSize      = 16
	headerSize    = 8 + saltSize
)

// kdfParams are the cost parameters of Argon2id.
type kdfParams struct {
	time    uint8
	threads uint8
	memory  uint32 // KiB
}

// defaultKDF is what new records are sealed with: the first of OWASP's
// Argon2id settings (19 MiB, 2 passes, 1 thread). One derivation takes
// about 40 ms of one core and 19 MiB (BenchmarkDeriveKey), so a guess at a
// secret costs an attacker as much; a source derives once per salt and
// keeps the key, so renewals cost none.
var defaultKDF = kdfParams{time: 2, threads: 1, memory: 19 << 10}

// acceptable bounds the parameters a record may ask for: what a reader
// pays is capped, whoever wrote the storage.
func (p kdfParams) acceptable() bool {
	return p.time >= 1 && p.time <= 8 && p.threads >= 1 && p.threads <= 4 &&
		p.memory >= 8<<10 && p.memory <= 64<<10
}

// maxDerivations bounds the key derivations running at once, in the whole
// process: each holds its memory (19 MiB) until it ends, and a gateway may
// have thousands of sources.
const maxDerivations = 2

var (
	derivationSlots = make(chan struct{}, maxDerivations)
	derivations     atomic.Int64 // derivations run, for tests
)

// sealKey is the AES-GCM key of one salt (and parameters).
type sealKey struct {
	header [headerSize]byte // bytes 0..23 of the records it seals
	aead   cipher.AEAD
}

// keysKept bounds the derived keys a source keeps: its own, and those of
// records that other instances wrote with salts of their own.
const keysKept = 4

// identity is what names a token in shared storage: the settings that tell
// which token it is, and no secret, so that the storage key is no oracle
// for one. Param values are in: they say which token it is (resource,
// tenant) and are documented as no place for a secret; token_header values
// are not (an API key goes there), only their names.
type identity struct {
	TokenURL    string              `json:"token_url"`
	Grant       grants.GrantType    `json:"grant"`
	ClientID    string              `json:"client_id"`
	Username    string              `json:"username"`
	ClientAuth  grants.AuthMethod   `json:"client_auth"`
	Body        grants.BodyEncoding `json:"body"`
	Scopes      []string            `json:"scopes"`
	Audience    string              `json:"audience"`
	Params      map[string]string   `json:"params"`
	HeaderNames []string            `json:"header_names"`
	TokenType   string              `json:"token_type"`
	DefaultTTL  time.Duration       `json:"default_ttl"`
	Issuer      string              `json:"issuer,omitempty"`
}

func identityOf(c grants.Config) identity {
	id := identity{
		TokenURL: c.TokenURL, Grant: c.Grant, ClientID: c.ClientID, Username: c.Username,
		ClientAuth: c.ClientAuth, Body: c.Body, Scopes: c.Scopes, Audience: c.Audience,
		Params: c.Params, TokenType: c.TokenType, DefaultTTL: c.DefaultTTL, Issuer: c.Issuer,
	}
	for name := range c.Headers {
		id.HeaderNames = append(id.HeaderNames, http.CanonicalHeaderKey(name))
	}
	slices.Sort(id.HeaderNames)
	return id
}

// storageID is the hex SHA-256 (first 16 bytes) of the identity.
func storageID(c grants.Config) (string, error) {
	b, err := json.Marshal(identityOf(c))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(append([]byte("upstream_oauth shared token v2\x00"), b...))
	return hex.EncodeToString(sum[:16]), nil
}

// record is the stored (then encrypted) form of a token: grants.Token's
// fields, with the JSON names of the format. It converts to and from
// grants.Token, so a field added there must be added here, in the format.
type record struct {
	AccessToken  string        `json:"access_token"`
	TokenType    string        `json:"token_type,omitempty"`
	RefreshToken string        `json:"refresh_token,omitempty"`
	Scope        string        `json:"scope,omitempty"`
	Lifetime     time.Duration `json:"lifetime"`
	Obtained     time.Time     `json:"obtained"`
	Expiry       time.Time     `json:"expiry"`
}

// errUnreadable marks a record that does not decrypt or parse: it is
// ignored, and replaced by the next token obtained.
var errUnreadable = errors.New("stored token record is unreadable")

// unreadable says why a record is unreadable, without its content.
func unreadable(why string) error { return fmt.Errorf("%w: %s", errUnreadable, why) }

// deriveKey runs Argon2id for salt and p over the source's material,
// waiting for one of the process's derivation slots (or ctx).
func (sh *Shared) deriveKey(ctx context.Context, header [headerSize]byte, p kdfParams) (*sealKey, error) {
	select {
	case derivationSlots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a key derivation: %w", ctx.Err())
	}
	key := argon2.IDKey(sh.material, header[8:], uint32(p.time), p.memory, p.threads, 32)
	<-derivationSlots
	derivations.Add(1)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealKey{header: header, aead: aead}, nil
}

// keyFor returns the key of header, derived once and then kept.
func (sh *Shared) keyFor(ctx context.Context, header [headerSize]byte, p kdfParams) (*sealKey, error) {
	sh.keysMu.Lock()
	for i, k := range sh.keys {
		if k.header == header {
			sh.keys = slices.Insert(slices.Delete(sh.keys, i, i+1), 0, k) // most recent first
			sh.keysMu.Unlock()
			return k, nil
		}
	}
	sh.keysMu.Unlock()
	k, err := sh.deriveKey(ctx, header, p)
	if err != nil {
		return nil, err
	}
	sh.keysMu.Lock()
	defer sh.keysMu.Unlock()
	sh.keys = slices.Insert(sh.keys, 0, k)
	if len(sh.keys) > keysKept {
		sh.keys = sh.keys[:keysKept]
	}
	return k, nil
}

// writeKey is the key new records are sealed with: that of the last record
// this source read (so the fleet converges on one salt, and a renewal
// derives nothing), else one of a fresh random salt.
func (sh *Shared) writeKey(ctx context.Context) (*sealKey, error) {
	sh.keysMu.Lock()
	k := sh.writer
	sh.keysMu.Unlock()
	if k != nil {
		return k, nil
	}
	var header [headerSize]byte
	header[0], header[1] = recordVersion, kdfArgon2id
	header[2], header[3] = defaultKDF.time, defaultKDF.threads
	binary.BigEndian.PutUint32(header[4:8], defaultKDF.memory)
	if _, err := rand.Read(header[8:]); err != nil {
		return nil, err
	}
	k, err := sh.keyFor(ctx, header, defaultKDF)
	if err != nil {
		return nil, err
	}
	sh.adopt(k, false)
	return k, nil
}

// adopt makes k the key new records are sealed with: always after a record
// sealed with it opened, else only when there is none yet.
func (sh *Shared) adopt(k *sealKey, opened bool) {
	sh.keysMu.Lock()
	defer sh.keysMu.Unlock()
	if opened || sh.writer == nil {
		sh.writer = k
	}
}

// seal encrypts tok into a record.
func (sh *Shared) seal(ctx context.Context, tok *grants.Token) ([]byte, error) {
	k, err := sh.writeKey(ctx)
	if err != nil {
		return nil, err
	}
	plain, err := json.Marshal(record(*tok)) //nolint:gosec // G117: the token is what is stored, and it is encrypted below
	if err != nil {
		return nil, err
	}
	n := k.aead.NonceSize()
	out := make([]byte, headerSize+n, headerSize+n+len(plain)+k.aead.Overhead())
	copy(out, k.header[:])
	if _, err := rand.Read(out[headerSize:]); err != nil {
		return nil, err
	}
	return k.aead.Seal(out, out[headerSize:], plain, sh.aad(k.header)), nil //nolint:gosec // G407: the nonce is random (rand.Read above)
}

// aad is what a record authenticates besides its ciphertext: the storage
// key and the header.
func (sh *Shared) aad(header [headerSize]byte) []byte {
	return append([]byte(sh.key+"\x00"), header[:]...)
}

// open decrypts a record, deriving its key if this source has not yet. An
// error wrapping errUnreadable says why it cannot be read; any other is
// ctx's.
func (sh *Shared) open(ctx context.Context, data []byte) (*grants.Token, error) {
	const nonceSize = 12
	if len(data) < headerSize+nonceSize+16 {
		return nil, unreadable("too short")
	}
	if data[0] != recordVersion {
		return nil, unreadable(fmt.Sprintf("record version %d, not %d", data[0], recordVersion))
	}
	p := kdfParams{time: data[2], threads: data[3], memory: binary.BigEndian.Uint32(data[4:8])}
	if data[1] != kdfArgon2id || !p.acceptable() {
		return nil, unreadable("key derivation or its parameters out of bounds")
	}
	header := [headerSize]byte(data[:headerSize])
	k, err := sh.keyFor(ctx, header, p)
	if err != nil {
		return nil, err
	}
	plain, err := k.aead.Open(nil, data[headerSize:headerSize+nonceSize], data[headerSize+nonceSize:], sh.aad(header))
	if err != nil {
		sh.adopt(k, false) // this salt will do for writing, if none other has
		return nil, unreadable("does not decrypt with this source's settings: corrupt, or sealed by an instance with other secrets")
	}
	sh.adopt(k, true)
	var r record
	if json.Unmarshal(plain, &r) != nil || r.AccessToken == "" || r.Lifetime <= 0 {
		return nil, unreadable("malformed token")
	}
	tok := grants.Token(r)
	return &tok, nil
}
