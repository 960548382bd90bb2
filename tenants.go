package upstreamoauth

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Per-request credentials (product.md, "Per-request credentials"): a
// handler whose credential fields carry request placeholders keeps a
// tenantTable, one token source per distinct set of resolved credentials,
// made on first use.
//
// What identifies a tenant's source: the values, for the request, of every
// credential field that carries a request placeholder, the secrets among
// them included (client_secret, password, and the values of param and
// token_header), each length-prefixed so that no two sets of values make
// the same key. Only the secrets can tell a client that knows another
// tenant's client id from that tenant: a key without them would hand a
// request the token of credentials other than its own. The fields without
// request placeholders are the same for every tenant, and are not read per
// request; nor is name, which is only read when a source is made.
//
// The table is kept in the sources pool under the handler's key (its
// settings, the fields' templates included), so a reload that leaves the
// handler as it is keeps every tenant's source and token.
type tenantTable struct {
	name  string         // the handler's name: the label of its sources' metrics
	keyOf []template     // the dynamic credential fields, in key order
	make  tenantMaker    // makes the source of a request's tenant
	max   int            // max_sources
	idle  time.Duration  // unused this long, a source is stopped
	tick  time.Duration  // how often idle sources are looked for
	clock func() int64   // the table's clock: time.Since its birth (tests set their own)
	stats *tenantMetrics // created, evicted, live

	// entries is read under mu's read lock on every request (a map index
	// with the key's bytes allocates nothing); made and evicted under its
	// write lock. Least recently used is by each tenant's lastUsed.
	mu      sync.RWMutex
	entries map[string]*tenant
	timer   *time.Timer
	closed  bool
}

// tenantMaker makes the source of the tenant whose request has repl, or
// returns errIncomplete.
type tenantMaker func(repl *caddy.Replacer) (*pooledSource, error)

// errIncomplete is a request whose credentials resolve incomplete: it is
// answered 403, and no token is requested.
var errIncomplete = errors.New("the request's credentials are incomplete")

// tenant is a table's entry: a tenant's source. A tenant that leaves the
// table (least recently used beyond max_sources, or idle) while requests
// use its source is stopped when the last of them is done: a request never
// sees its source stop under it, nor its token logged out while it carries
// it.
type tenant struct {
	key      string
	rs       requestSource // the source, as the request path takes it
	src      *pooledSource
	lastUsed atomic.Int64 // the table's clock (time since born) when last used
	users    atomic.Int32 // requests using the source (taken under the table's lock)
	removed  atomic.Bool  // out of the table: stopped once users is 0
	stopped  atomic.Bool
}

// release ends a request's use of tn's source (source took it).
func (tn *tenant) release() {
	if tn.users.Add(-1) == 0 && tn.removed.Load() {
		tn.stop()
	}
}

// leave stops tn's source, which is out of the table, unless a request
// still uses it: then its last user does (release).
func (tn *tenant) leave() {
	tn.removed.Store(true)
	if tn.users.Load() == 0 {
		tn.stop()
	}
}

// stop stops tn's source, once.
func (tn *tenant) stop() {
	if tn.stopped.CompareAndSwap(false, true) {
		tn.src.stop()
	}
}

// Defaults of the tenant table.
const (
	defaultMaxSources = 10000
	defaultIdle       = time.Hour
)

func newTenantTable(name string, keyOf []template, maker tenantMaker, maxSources int, idle time.Duration) *tenantTable {
	born := time.Now()
	t := &tenantTable{name: name, keyOf: keyOf, make: maker, max: maxSources, idle: idle, entries: map[string]*tenant{},
		clock: func() int64 { return int64(time.Since(born)) }}
	t.tick = max(idle/60, time.Second)
	t.stats = tenantStats(name)
	t.timer = time.AfterFunc(t.tick, t.sweep)
	return t
}

// source returns the source of the tenant whose request has repl, making it
// on first use. The request uses it until it calls the tenant's release.
func (t *tenantTable) source(repl *caddy.Replacer) (*tenant, error) {
	var buf [256]byte // on the stack: a key longer than that goes to the heap
	key, err := t.appendKey(buf[:0], repl)
	if err != nil {
		return nil, err
	}
	t.mu.RLock()
	tn, ok := t.entries[string(key)]
	if ok {
		tn.users.Add(1) // under the lock: a tenant in the table is not stopped
	}
	t.mu.RUnlock()
	if ok {
		tn.lastUsed.Store(t.now())
		return tn, nil
	}
	return t.add(string(key), repl)
}

// Bounds of a tenant's credentials: each dynamic field's value, and the
// key they make together. A request beyond them is answered 403, and makes
// no source: where the values come from the client (a header, say), its
// tenant costs the table at most a few KiB however large the values it
// sends (the key, the source's settings, the forms its redactor knows).
const (
	maxTenantValue = 2 << 10
	maxTenantKey   = 4 << 10
)

// errTooLong is a request whose credentials are over the bounds.
var errTooLong = fmt.Errorf("the request's credentials are too long (a value over %d bytes, or over %d in all)",
	maxTenantValue, maxTenantKey)

// now is the table's clock: the monotonic time since it was made.
func (t *tenantTable) now() int64 { return t.clock() }

// appendKey appends the key of the request's tenant: each dynamic field's
// value, after its length; errTooLong beyond maxTenantValue or
// maxTenantKey.
func (t *tenantTable) appendKey(dst []byte, repl *caddy.Replacer) ([]byte, error) {
	start := len(dst)
	for _, f := range t.keyOf {
		at := len(dst)
		dst = append(dst, 0, 0, 0, 0)
		dst = f.appendValue(dst, repl)
		n := len(dst) - at - 4
		if n > maxTenantValue || len(dst)-start > maxTenantKey {
			return nil, errTooLong
		}
		binary.BigEndian.PutUint32(dst[at:], uint32(n)) //nolint:gosec // G115: at most maxTenantValue
	}
	return dst, nil
}

// add makes the source of a tenant not in the table yet. Two requests of
// one new tenant at once make one source: the second finds the first's.
// Beyond max_sources, the least recently used source is stopped (found by
// a scan: a source is made once per tenant, and its token request costs
// far more).
func (t *tenantTable) add(key string, repl *caddy.Replacer) (*tenant, error) {
	src, err := t.make(repl)
	if err != nil {
		return nil, err
	}
	tn := &tenant{key: key, rs: requestSource{cs: src.Source, p: src}, src: src}
	tn.lastUsed.Store(t.now())
	var evicted []*tenant
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		src.stop()
		return nil, errTableClosed
	}
	if cur, ok := t.entries[key]; ok { // made meanwhile
		cur.users.Add(1)
		t.mu.Unlock()
		src.stop()
		return cur, nil
	}
	tn.users.Add(1)
	t.entries[key] = tn
	for len(t.entries) > t.max {
		evicted = append(evicted, t.removeLRULocked(tn))
	}
	live := len(t.entries)
	t.mu.Unlock()
	t.stats.created.Inc()
	t.stats.live.Set(float64(live))
	for _, e := range evicted {
		t.stats.evicted.WithLabelValues(evictedCapacity).Inc()
		e.leave()
	}
	return tn, nil
}

// errTableClosed is answered by a table that its handler's config has let
// go of, for the moment a request still uses it.
var errTableClosed = errors.New("the handler's token sources are stopped")

// removeLRULocked removes the least recently used tenant other than keep.
func (t *tenantTable) removeLRULocked(keep *tenant) *tenant {
	var lru *tenant
	for _, tn := range t.entries {
		if tn != keep && (lru == nil || tn.lastUsed.Load() < lru.lastUsed.Load()) {
			lru = tn
		}
	}
	delete(t.entries, lru.key)
	return lru
}

// sweep stops the sources unused for idle.
func (t *tenantTable) sweep() {
	cutoff := t.now() - int64(t.idle)
	var idle []*tenant
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	for key, tn := range t.entries {
		if tn.lastUsed.Load() <= cutoff {
			delete(t.entries, key)
			idle = append(idle, tn)
		}
	}
	live := len(t.entries)
	t.timer.Reset(t.tick)
	t.mu.Unlock()
	if len(idle) > 0 {
		t.stats.live.Set(float64(live))
		t.stats.evicted.WithLabelValues(evictedIdle).Add(float64(len(idle)))
		for _, e := range idle {
			e.leave()
		}
	}
}

// sources lists the table's sources.
func (t *tenantTable) sources() []*pooledSource {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]*pooledSource, 0, len(t.entries))
	for _, tn := range t.entries {
		out = append(out, tn.src)
	}
	return out
}

// Destruct stops every source of the table, once no handler uses it (as a
// reload or a stop does to a static source).
func (t *tenantTable) Destruct() error {
	t.mu.Lock()
	t.closed = true
	t.timer.Stop()
	all := slices.Collect(maps.Values(t.entries))
	clear(t.entries)
	t.mu.Unlock()
	for _, tn := range all {
		tn.stop() // the config is done with its requests
	}
	forgetTenantStats(t.name)
	return nil
}

// The ids of the fields that may carry request placeholders (settings'
// resolve takes their values by id). scope, param and token_header take
// an index or a name after the prefix.
const (
	fieldName         = "name"
	fieldClientID     = "client_id"
	fieldClientSecret = "client_secret"
	fieldUsername     = "username"
	fieldPassword     = "password"
	fieldAudience     = "audience"
	fieldScope        = "scope/"
	fieldParam        = "param/"
	fieldTokenHeader  = "token_header/"
)

// credFields lists h's fields that may carry request placeholders, by id,
// with their configured values.
func (h *Handler) credFields() map[string]string {
	f := map[string]string{
		fieldName: h.Name, fieldClientID: h.ClientID, fieldClientSecret: h.ClientSecret,
		fieldUsername: h.Username, fieldPassword: h.Password, fieldAudience: h.Audience,
	}
	for i, sc := range h.Scope {
		f[fieldScope+strconv.Itoa(i)] = sc
	}
	for k, v := range h.Param {
		f[fieldParam+k] = v
	}
	for k, v := range h.TokenHeader {
		f[fieldTokenHeader+k] = v
	}
	return f
}

// dynamicFields compiles h's credential fields and returns those with
// request placeholders, by id: none for a handler with static credentials.
func (h *Handler) dynamicFields(global *caddy.Replacer) map[string]template {
	var dyn map[string]template
	for id, v := range h.credFields() {
		if t := compileTemplate(v, global); t.dynamic() {
			if dyn == nil {
				dyn = map[string]template{}
			}
			dyn[id] = t
		}
	}
	return dyn
}

// steeringFields are h's fields where a request placeholder would let a
// client steer where credentials go or how: refused (global placeholders,
// such as {env.*}, are fine).
func (h *Handler) steeringFields() [][2]string {
	f := [][2]string{
		{"provider", h.Provider}, {"token_url", h.TokenURL}, {"issuer", h.Issuer},
		{"logout_url", h.LogoutURL}, {"grant", h.Grant}, {"client_auth", h.ClientAuth},
		{"body", h.Body}, {"header", h.Header}, {"header scheme", h.HeaderScheme},
		{"refresh_ahead", h.RefreshAhead},
	}
	for k := range h.Param {
		f = append(f, [2]string{"param name", k})
	}
	for k := range h.TokenHeader {
		f = append(f, [2]string{"token_header name", k})
	}
	if t := h.TLS; t != nil {
		for _, ca := range t.CA {
			f = append(f, [2]string{"tls ca", ca})
		}
		f = append(f, [2]string{"tls client_cert", t.ClientCert}, [2]string{"tls client_cert key", t.ClientKey},
			[2]string{"tls server_name", t.ServerName})
	}
	if a := h.Assertion; a != nil {
		f = append(f, [2]string{"assertion key", a.Key}, [2]string{"assertion alg", a.Alg},
			[2]string{"assertion kid", a.Kid}, [2]string{"assertion x5t", a.X5T},
			[2]string{"assertion audience", a.Audience})
	}
	return f
}

// checkSteering refuses a request placeholder in a field of steeringFields.
func (h *Handler) checkSteering() error {
	for _, f := range h.steeringFields() {
		if ph := requestPlaceholder(f[1]); ph != "" {
			return steeringError(f[0], ph)
		}
	}
	return nil
}

func steeringError(field, placeholder string) error {
	return fmt.Errorf("%s: request placeholder %s is not allowed here (no client may steer where credentials go); "+
		"per-request values go in client_id, client_secret, username, password, scope, audience, name, param and token_header values",
		field, placeholder)
}

// provisionTenants attaches h to the tenant table of its settings, making
// it if no handler (in this config or the one before a reload) has it.
func (h *Handler) provisionTenants(ctx caddy.Context, global *caddy.Replacer, dyn map[string]template) error {
	// The settings with each dynamic field standing as its template: they
	// are checked, name the handler, and key its table.
	raw := map[string]string{}
	for id, t := range dyn {
		raw[id] = t.raw
	}
	s, err := h.resolve(global, raw)
	if err != nil {
		return err
	}
	s.digestFiles()
	// The handler's name: its name, or its name's template, or the
	// default with the client id's template ("1nce:{tenant_user}").
	name := s.Name
	maxSources := h.MaxSources
	if maxSources == 0 {
		maxSources = defaultMaxSources
	}
	// The header and its scheme too: the table keeps each tenant's header
	// value, which two handlers that differ in them could not share. And
	// each dynamic field as compiled, its global placeholders expanded: s
	// has the templates as written, and a reload that changes only the
	// {env.*} or {file.*} value in one must not keep the table (whose maker
	// has the old value).
	compiled := make(map[string][]string, len(dyn))
	for id, t := range dyn {
		for _, p := range t.parts {
			if p.key != "" {
				compiled[id] = append(compiled[id], "placeholder:"+p.key)
			} else {
				compiled[id] = append(compiled[id], "literal:"+p.lit)
			}
		}
	}
	keyed := struct {
		Settings   settings            `json:"settings"`
		MaxSources int                 `json:"max_sources"`
		Header     string              `json:"header"`
		Prefix     string              `json:"prefix"`
		Dynamic    map[string][]string `json:"dynamic"`
	}{s, maxSources, s.header, s.prefix, compiled}
	b, _ := json.Marshal(keyed) //nolint:gosec // G117: hashed, never stored or shown
	sum := sha256.Sum256(append([]byte("tenants\x00"), b...))
	key := hex.EncodeToString(sum[:])

	hc, err := tokenHTTPClient(ctx, s.TLS)
	if err != nil {
		return err
	}
	ids := slices.Sorted(maps.Keys(dyn))
	var keyOf []template
	for _, id := range ids {
		if id != fieldName {
			keyOf = append(keyOf, dyn[id])
		}
	}
	// A static name (its global placeholders expanded) names each tenant's
	// source with the tenant's client id.
	files, staticName := s.Files, ""
	if _, nameDynamic := dyn[fieldName]; h.Name != "" && !nameDynamic {
		staticName = s.Name
	}
	maker := func(repl *caddy.Replacer) (*pooledSource, error) {
		vals := make(map[string]string, len(dyn))
		for id, t := range dyn {
			vals[id] = t.valueFor(repl)
		}
		ts, err := h.resolve(global, vals)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errIncomplete, err)
		}
		ts.Files = files
		if staticName != "" {
			ts.Name = staticName + ":" + ts.Grants.ClientIdentity()
		}
		return newSource(ts, hc, name)
	}
	val, _, err := sources.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newTenantTable(name, keyOf, maker, maxSources, defaultIdle), nil
	})
	if err != nil {
		return err
	}
	h.key = key // Cleanup lets go of the reference only once it is taken
	h.tenants = val.(*tenantTable)
	return nil
}
