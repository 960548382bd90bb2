// Package cache holds tokens: one Source per distinct token configuration,
// read without a lock on the request path, renewed in the background before
// expiry, with at most one token request in flight and exponential backoff
// after failures. It knows nothing of Caddyfile syntax or HTTP handlers.
package cache

import (
	"context"
	"errors"
	"fmt"
	weakrand "math/rand/v2" // jitter, not secrets
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// Fetcher obtains tokens; *grants.Client is one.
type Fetcher interface {
	Token(ctx context.Context) (*grants.Token, error)
	Refresh(ctx context.Context, refreshToken string) (*grants.Token, error)
}

// Result is the outcome of one attempt to obtain a token, for metrics and
// events. Token is nil when Err is set.
type Result struct {
	Source   string
	Token    *grants.Token
	Err      error
	Duration time.Duration
	Refresh  bool // obtained with the refresh_token grant
	Shared   bool // taken from shared storage: no token request was made
}

// Options configure a Source. Zero values take the defaults noted.
type Options struct {
	// Name names the source in logs, metrics and the admin API.
	Name    string
	Fetcher Fetcher
	// Logout, if set, retires a token at the provider (best effort).
	Logout func(context.Context, *grants.Token) error
	// RefreshAhead renews this long before expiry; when zero,
	// RefreshFraction of the lifetime is used instead (default 0.2).
	RefreshAhead    time.Duration
	RefreshFraction float64
	// Timeout bounds one token request, logout included. Default 10s.
	Timeout time.Duration
	// BackoffBase and BackoffMax bound the delay before a retry: the n-th
	// failure in a row waits a random time between BackoffBase and
	// min(BackoffMax, BackoffBase·2ⁿ⁻¹) (full jitter above a floor). A
	// credential error (provider 400/401/403) starts 8× higher. Defaults 1s
	// and 5m.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// RetireBase and RetireMax space the retirements of the source's token
	// that the upstream asks for (Retire), so that no client can make the
	// source request a token per request: after a retirement, the next one
	// waits RetireBase, then twice that after each retirement that comes
	// soon after the one before, up to RetireMax, whatever the upstream
	// accepted in between. The spacing relaxes only once no retirement has
	// happened for RetireQuiet. Defaults: BackoffBase, BackoffMax, and
	// twice RetireMax.
	RetireBase  time.Duration
	RetireMax   time.Duration
	RetireQuiet time.Duration
	// Header makes the source build the request header's value
	// (HeaderPrefix + the access token) once per token, for GetHeader to
	// return. Default: false.
	Header       bool
	HeaderPrefix string
	// Logger receives the source's log lines. Default: a no-op logger.
	Logger *zap.Logger
	// OnResult, if set, is called after every token request.
	OnResult func(Result)
	// Shared, if set, shares the token with other instances through
	// storage (see Shared).
	Shared *Shared
}

// Source holds the token of one token configuration.
type Source struct {
	opts Options
	log  *zap.Logger

	snap     atomic.Pointer[snapshot]
	used     atomic.Bool // a request read the token since the last timer
	inflight atomic.Bool // mirrors flight != nil, for the lock-free path

	mu      sync.Mutex
	flight  *flight
	timer   *time.Timer
	refresh string // refresh token of the last response, if any
	// private: refresh was obtained by this instance's own token request
	// and never stored (or claimed from the storage, which then no longer
	// holds it), so no other instance can have redeemed it.
	private bool
	// refreshFails counts the attempts in a row whose refresh_token grant
	// with refresh failed without the provider refusing it (see
	// refreshTries).
	refreshFails int
	retired      string // access token last retired, never to be taken back from storage
	stopped      bool
	ctx          context.Context
	cancel       context.CancelFunc
	wg           sync.WaitGroup // token requests in flight

	// Retirements the upstream asked for (Retire): how many came each soon
	// after the one before, and when the last one was, by clock (time.Now;
	// tests set their own).
	retireStreak int
	lastRetire   time.Time
	clock        func() time.Time

	logouts sync.WaitGroup // logouts in flight (WaitLogouts)

	requests, failures atomic.Int64
	lastSuccess        atomic.Int64 // unix nanoseconds
}

// snapshot is the immutable state the request path reads.
type snapshot struct {
	tok     *grants.Token // nil: none held
	header  string        // Options.HeaderPrefix + tok.AccessToken, with Options.Header
	expiry  time.Time     // tok.Expiry, here for the request path to read on one line
	renewAt time.Time
	retryAt time.Time // while backing off
	// waitUntil: the provider's own Retry-After, which even Renew keeps to
	waitUntil time.Time
	err       error // last failure, nil after a success
	failures  int   // failures in a row
}

// flight is one token request in progress; done closes when it ends.
type flight struct {
	done chan struct{}
	tok  *grants.Token
	err  error
}

// Defaults of Options.
const (
	DefaultRefreshFraction = 0.2
	DefaultTimeout         = 10 * time.Second
)

// New returns a Source that obtains its first token when first asked.
func New(opts Options) *Source {
	if opts.RefreshFraction <= 0 || opts.RefreshFraction >= 1 {
		opts.RefreshFraction = DefaultRefreshFraction
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = time.Second
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 5 * time.Minute
	}
	if opts.BackoffMax < opts.BackoffBase {
		opts.BackoffMax = opts.BackoffBase
	}
	if opts.RetireBase <= 0 {
		opts.RetireBase = opts.BackoffBase
	}
	if opts.RetireMax < opts.RetireBase {
		opts.RetireMax = max(opts.BackoffMax, opts.RetireBase)
	}
	if opts.RetireQuiet <= 0 {
		opts.RetireQuiet = 2 * opts.RetireMax
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Source{opts: opts, log: log.With(zap.String("source", opts.Name)), clock: time.Now}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.snap.Store(&snapshot{})
	return s
}

// Name is the source's name.
func (s *Source) Name() string { return s.opts.Name }

// ErrStopped is returned by Get after Stop.
var ErrStopped = errors.New("token source stopped")

// UnavailableError says why no token can be had now, and when the next
// attempt is due (zero when none is scheduled).
type UnavailableError struct {
	RetryAfter time.Duration
	Err        error
}

func (e *UnavailableError) Error() string {
	if e.Err == nil {
		return "no valid token"
	}
	return "no valid token: " + e.Err.Error()
}
func (e *UnavailableError) Unwrap() error { return e.Err }

// Get returns a valid token. While one is held it never waits: a renewal due
// soon is started in the background. With none held it joins (or starts) the
// one token request in flight and waits for it or ctx; while backing off
// after a failure it returns an *UnavailableError at once.
func (s *Source) Get(ctx context.Context) (*grants.Token, error) {
	if st, ok := s.held(); ok {
		return st.tok, nil
	}
	return s.wait(ctx)
}

// GetHeader is Get, with the token's header value (Options.HeaderPrefix
// and the access token; empty unless Options.Header), built once per
// token.
func (s *Source) GetHeader(ctx context.Context) (*grants.Token, string, error) {
	if st, ok := s.held(); ok {
		return st.tok, st.header, nil
	}
	tok, err := s.wait(ctx)
	if err != nil || !s.opts.Header {
		return tok, "", err
	}
	return tok, s.opts.HeaderPrefix + tok.AccessToken, nil
}

// held is the snapshot of the token held, if it is valid: Get's fast path.
func (s *Source) held() (*snapshot, bool) {
	if !s.used.Load() {
		s.used.Store(true)
	}
	st := s.snap.Load()
	if st.tok == nil {
		return nil, false
	}
	// One read of the monotonic clock (time.Until), half the price of
	// time.Now: left is how long the token lasts; a renewal is due once left
	// is down to the time between renewAt and expiry.
	left := time.Until(st.expiry)
	if left <= 0 {
		return nil, false
	}
	if left <= st.expiry.Sub(st.renewAt) {
		s.renewSoon(st)
	}
	return st, true
}

// renewSoon starts the renewal of st's token in the background, unless one
// is in flight or the source is backing off.
func (s *Source) renewSoon(st *snapshot) {
	if !s.inflight.Load() && time.Until(st.retryAt) <= 0 {
		s.mu.Lock()
		s.startLocked(false)
		s.mu.Unlock()
	}
}

// wait is Get's slow path: no valid token is held.
func (s *Source) wait(ctx context.Context) (*grants.Token, error) {
	s.mu.Lock()
	st := s.snap.Load()
	now := time.Now()
	if st.tok != nil && now.Before(st.tok.Expiry) { // obtained meanwhile
		s.mu.Unlock()
		return st.tok, nil
	}
	if now.Before(st.retryAt) && s.flight == nil {
		s.mu.Unlock()
		return nil, &UnavailableError{RetryAfter: st.retryAt.Sub(now), Err: st.err}
	}
	f := s.startLocked(true)
	s.mu.Unlock()
	if f == nil {
		return nil, ErrStopped
	}
	select {
	case <-f.done:
		if f.err != nil {
			st := s.snap.Load()
			return nil, &UnavailableError{RetryAfter: time.Until(st.retryAt), Err: f.err}
		}
		return f.tok, nil
	case <-ctx.Done():
		return nil, &UnavailableError{Err: fmt.Errorf("waiting for a token: %w", ctx.Err())}
	}
}

// startLocked returns the token request in flight, starting one unless
// backing off (force ignores backoff). s.mu must be held. Nil after Stop, or
// when backing off.
func (s *Source) startLocked(force bool) *flight {
	if s.flight != nil {
		return s.flight
	}
	if s.stopped {
		return nil
	}
	if !force && time.Now().Before(s.snap.Load().retryAt) {
		return nil
	}
	f := &flight{done: make(chan struct{})}
	s.flight = f
	s.inflight.Store(true)
	s.wg.Add(1)
	go s.run(f)
	return f
}

// run performs one token request and publishes its outcome.
func (s *Source) run(f *flight) {
	defer s.wg.Done()
	s.mu.Lock()
	a := attempt{refresh: s.refresh, private: s.private, retired: s.retired}
	if cur := s.snap.Load().tok; cur != nil {
		a.current = cur.AccessToken
		if time.Now().Before(cur.Expiry) {
			a.validUntil = cur.Expiry
		}
	}
	s.mu.Unlock()

	tok, res, carried := s.obtain(a)

	s.mu.Lock()
	old := s.snap.Load()
	now := time.Now()
	var next *snapshot
	if res.Err == nil {
		s.refresh, s.private, s.refreshFails = carried.refresh, carried.private, 0
		next = &snapshot{tok: tok, expiry: tok.Expiry, renewAt: s.renewAt(tok)}
		if s.opts.Header {
			next.header = s.opts.HeaderPrefix + tok.AccessToken
		}
		// Only reads of this token count as use: the request that asked
		// for it does not, or a one-off request would cost a renewal.
		s.used.Store(false)
		s.lastSuccess.Store(now.UnixNano())
		s.scheduleLocked(next.renewAt.Sub(now))
	} else {
		s.carryLocked(carried, res)
		next = &snapshot{err: res.Err, failures: old.failures + 1}
		if old.tok != nil && now.Before(old.tok.Expiry) {
			next.tok, next.header, next.expiry, next.renewAt = old.tok, old.header, old.expiry, old.renewAt // keep using it while it lasts
		}
		delay := s.backoff(next.failures, res.Err)
		next.retryAt = now.Add(delay)
		if pe, ok := errors.AsType[*grants.ProviderError](res.Err); ok && pe.RetryAfter > 0 {
			next.waitUntil = now.Add(min(pe.RetryAfter, grants.MaxRetryAfter))
		}
		s.scheduleLocked(delay)
	}
	s.snap.Store(next)
	f.tok, f.err = tok, res.Err
	s.flight = nil
	s.inflight.Store(false)
	close(f.done)
	s.mu.Unlock()

	s.report(res, next, old)
}

// refreshTries is how many attempts in a row a refresh token is tried on
// while its grant fails without the provider refusing it (a provider that
// answers 500 to a refresh token it no longer knows would otherwise leave
// the source without a token for as long as it does so): then it is
// dropped, and the next attempt uses the configured grant.
const refreshTries = 3

// carryLocked keeps for the next attempt the refresh token that a failed
// attempt left (see fetch), unless it has now failed refreshTries attempts
// in a row. s.mu must be held.
func (s *Source) carryLocked(c carry, res Result) {
	if c.refresh != s.refresh {
		s.refreshFails = 0
	}
	s.refresh, s.private = c.refresh, c.private
	if c.refresh == "" || !res.Refresh {
		return
	}
	s.refreshFails++
	if s.refreshFails >= refreshTries {
		s.refresh, s.private, s.refreshFails = "", false, 0
		s.log.Info("the refresh_token grant failed on several attempts in a row; the next attempt uses the configured grant",
			zap.Int("attempts", refreshTries))
	}
}

// carry is the refresh token an attempt leaves for the next one.
type carry struct {
	refresh string
	// private: no other instance can have redeemed refresh (see
	// Source.private).
	private bool
}

// attempt is what a token request starts from.
type attempt struct {
	refresh string // refresh token of the token held, if any
	// private: refresh was obtained by this instance's own token request
	// and never stored.
	private bool
	current string // access token held: not to be taken back from storage
	// retired is the access token last retired: neither it nor its refresh
	// token is taken back from storage.
	retired    string
	validUntil time.Time // when the token held expires; zero: none is valid
}

// avoids reports whether tok is not to be taken back from storage.
func (a attempt) avoids(tok *grants.Token) bool {
	return tok.AccessToken == a.current || tok.AccessToken == a.retired
}

// obtain gets a new token: through shared storage when the source shares
// (falling back to its own request when the storage fails), else from the
// provider. A shared source that fetches on its own uses only a refresh
// token it obtained on its own and never stored (else the configured
// grant): one that went through the storage may have been redeemed by
// another instance. The carry is the refresh token for the next attempt:
// the new token's, and whether it is such a private one; after a failure,
// the refresh token that is still good for another try, if any.
func (s *Source) obtain(a attempt) (*grants.Token, Result, carry) {
	sh := s.opts.Shared
	if sh == nil {
		tok, res, keep := s.fetch(a.refresh)
		return tok, res, outcome(tok, res, keep, true)
	}
	if !a.private {
		a.refresh = ""
	}
	if tok, res, c, ok := s.obtainShared(sh, a); ok {
		return tok, res, c
	}
	tok, res, keep := s.fetch(a.refresh)
	return tok, res, outcome(tok, res, keep, true)
}

// outcome is the carry of a fetch: on success the new token's refresh
// token, private as the caller says; after a failure keep, which only this
// instance holds.
func outcome(tok *grants.Token, res Result, keep string, private bool) carry {
	if res.Err == nil {
		return carry{refresh: tok.RefreshToken, private: private}
	}
	return carry{refresh: keep, private: true}
}

// fetch asks the provider for a token: with the refresh token first, when
// there is one, then with the configured grant, but only when the provider
// refused the refresh token (see refused). Any other failure of the
// refresh_token grant (a Retry-After, a 408, 429 or 5xx, no answer) is the
// attempt's: the source backs off, honouring the provider's Retry-After,
// before any further token request, and does not double the load on a
// provider that struggles. keep is the refresh token for the next attempt
// after such a failure: refresh, unless the request went out and got no
// answer (see spent); else "".
func (s *Source) fetch(refresh string) (tok *grants.Token, res Result, keep string) {
	res = Result{Source: s.opts.Name}
	start := time.Now()
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
	defer cancel()
	if refresh != "" {
		tok, err := s.opts.Fetcher.Refresh(ctx, refresh)
		s.requests.Add(1)
		if err == nil {
			res.Token, res.Refresh, res.Duration = tok, true, time.Since(start)
			return tok, res, ""
		}
		s.failures.Add(1)
		if !refused(err) {
			res.Err, res.Refresh, res.Duration = err, true, time.Since(start)
			if !spent(err) {
				keep = refresh
			}
			return nil, res, keep
		}
		if s.opts.OnResult != nil {
			s.opts.OnResult(Result{Source: s.opts.Name, Err: err, Duration: time.Since(start), Refresh: true})
		}
		s.log.Info("the provider refused the refresh token; falling back to the configured grant", zap.Error(err))
		start = time.Now()
		cancel()
		ctx, cancel = context.WithTimeout(s.ctx, s.opts.Timeout)
		defer cancel()
	}
	tok, err := s.opts.Fetcher.Token(ctx)
	res.Token, res.Err, res.Duration = tok, err, time.Since(start)
	s.requests.Add(1)
	if err != nil {
		s.failures.Add(1)
	}
	return tok, res, ""
}

// refused reports whether err is the provider refusing a refresh_token
// grant itself, which the configured grant is then tried after at once: an
// error answer that a later attempt will not mend (RFC 6749 section 5.2:
// invalid_grant, invalid_request, unauthorized_client, ... with 400 or 401,
// or in a 200; Telenor's 401 code 7; any 4xx but 408 and 429, without a
// Retry-After), or an answer that is no usable token (but a 5xx). No
// answer, a failure before the request went out, and an answer that says
// "not now" (see grants.ProviderError.Transient) are not refusals.
func refused(err error) bool {
	if pe, ok := errors.AsType[*grants.ProviderError](err); ok {
		return !pe.Transient()
	}
	re, ok := errors.AsType[*grants.ResponseError](err)
	return ok && re.Status < 500
}

// spent reports whether a refresh_token grant that failed with err, not
// refused, may have used its refresh token up without the source learning
// so: the request went out in full and no answer came (a timeout, a
// connection lost). Sending it again would replay a refresh token that a
// provider which rotates them may have redeemed already, so the next
// attempt uses the configured grant instead. A context's end without a
// *grants.TransportError to tell counts as such.
func spent(err error) bool {
	if te, ok := errors.AsType[*grants.TransportError](err); ok {
		return te.Sent
	}
	if _, ok := errors.AsType[*grants.ProviderError](err); ok {
		return false
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// report logs an outcome and passes it on.
func (s *Source) report(res Result, next, old *snapshot) {
	if res.Shared {
		s.log.Info("token obtained from shared storage",
			zap.Duration("lifetime", res.Token.Lifetime),
			zap.Time("expires", res.Token.Expiry),
			zap.String("scope", res.Token.Scope))
		if s.opts.OnResult != nil {
			s.opts.OnResult(res) // an event, but no token request to count
		}
		return
	}
	if res.Err == nil {
		s.log.Info("token obtained",
			zap.Duration("lifetime", res.Token.Lifetime),
			zap.Time("expires", res.Token.Expiry),
			zap.String("scope", res.Token.Scope),
			zap.Bool("refresh_grant", res.Refresh),
			zap.Duration("took", res.Duration))
	} else if !errors.Is(res.Err, context.Canceled) || !s.isStopped() {
		retryIn := time.Until(next.retryAt).Round(time.Millisecond)
		if next.tok != nil {
			s.log.Warn("token renewal failed; the current token is still valid",
				zap.Error(res.Err), zap.Bool("refresh_grant", res.Refresh), zap.Duration("retry_in", retryIn), zap.Time("expires", next.tok.Expiry))
		} else {
			s.log.Warn("token request failed", zap.Error(res.Err), zap.Bool("refresh_grant", res.Refresh), zap.Duration("retry_in", retryIn),
				zap.Int("failures_in_a_row", next.failures))
			if old.tok != nil || old.failures == 0 {
				s.log.Error("no valid token: requests are answered 502 until a token is obtained",
					zap.Duration("retry_in", retryIn))
			}
		}
	}
	if s.opts.OnResult != nil {
		s.opts.OnResult(res)
	}
}

func (s *Source) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// renewAt is when a renewal of tok is due: refresh_ahead before expiry, less
// a little jitter (up to 5% of the lifetime) so that sources created
// together do not renew together.
func (s *Source) renewAt(tok *grants.Token) time.Time {
	jitter := time.Duration(weakrand.Int64N(int64(tok.Lifetime/20) + 1))
	return tok.Expiry.Add(-s.ahead(tok) - jitter)
}

// ahead is how long before its expiry tok is due for renewal.
func (s *Source) ahead(tok *grants.Token) time.Duration {
	ahead := s.opts.RefreshAhead
	if ahead <= 0 {
		ahead = time.Duration(float64(tok.Lifetime) * s.opts.RefreshFraction)
	}
	if ahead >= tok.Lifetime {
		ahead = tok.Lifetime / 2
	}
	return ahead
}

// backoff is the delay after the n-th failure in a row: at least the
// provider's own Retry-After, when it sent one (at most an hour).
func (s *Source) backoff(n int, err error) time.Duration {
	base := s.opts.BackoffBase
	pe, isProvider := errors.AsType[*grants.ProviderError](err)
	if isProvider && pe.Credentials() {
		base *= 8
	}
	ceiling := doubled(base, n, s.opts.BackoffMax)
	delay := base + time.Duration(weakrand.Int64N(int64(ceiling-base)+1))
	if isProvider {
		delay = max(delay, min(pe.RetryAfter, grants.MaxRetryAfter))
	}
	return delay
}

// doubled is base·2ⁿ⁻¹, at most limit, and never less than base: the
// ceiling of backoff's n-th delay, and retireSpacing's.
func doubled(base time.Duration, n int, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, max(limit, base))
}

// scheduleLocked sets the one timer of the source to fire after d.
func (s *Source) scheduleLocked(d time.Duration) {
	if s.stopped {
		return
	}
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.onTimer)
		return
	}
	s.timer.Reset(d)
}

// onTimer starts a due renewal or retry, if the token has been asked for
// since the last one; an unused token is left to lapse, and the next request
// fetches anew.
func (s *Source) onTimer() {
	if !s.used.Swap(false) {
		return
	}
	s.mu.Lock()
	s.startLocked(false)
	s.mu.Unlock()
}

// Retire drops tok if it is still the current token (the upstream refused
// it) and starts a new token request, unless backing off. A token that is no
// longer current is left alone, so concurrent refusals cause one renewal.
// Retirements are spaced (Options.RetireBase): while the next one has to
// wait, tok stays current, and the caller passes the upstream's answer on.
// It reports whether tok was retired now.
func (s *Source) Retire(tok *grants.Token) bool {
	s.mu.Lock()
	st := s.snap.Load()
	if st.tok == nil || st.tok != tok {
		s.mu.Unlock()
		return false
	}
	now := s.clock()
	if wait := s.retireWaitLocked(now); wait > 0 {
		streak := s.retireStreak
		s.mu.Unlock()
		if c := s.log.Check(zap.DebugLevel, "the upstream refused the token; its retirement must wait, so the answer passes through"); c != nil {
			c.Write(zap.Duration("retire_in", wait), zap.Int("retirements_in_a_row", streak))
		}
		return false
	}
	if now.Sub(s.lastRetire) >= s.opts.RetireQuiet {
		s.retireStreak = 0
	}
	s.retireStreak++
	s.lastRetire = now
	streak, next := s.retireStreak, s.retireSpacing(s.retireStreak)
	next2 := *st
	next2.tok, next2.renewAt = nil, time.Time{}
	s.retired = tok.AccessToken
	s.snap.Store(&next2)
	s.startLocked(false)
	s.logoutLocked(tok) // under s.mu: no Add once Stop is waiting
	s.mu.Unlock()
	s.log.Info("token retired: the upstream refused it",
		zap.Int("retirements_in_a_row", streak), zap.Duration("next_retirement_after", next))
	return true
}

// retireWaitLocked is how long a retirement asked for at now must wait: 0
// when none happened recently. s.mu must be held.
func (s *Source) retireWaitLocked(now time.Time) time.Duration {
	if s.retireStreak == 0 || now.Sub(s.lastRetire) >= s.opts.RetireQuiet {
		return 0
	}
	return s.lastRetire.Add(s.retireSpacing(s.retireStreak)).Sub(now)
}

// retireSpacing is the least time between the n-th retirement in a row and
// the next: RetireBase·2ⁿ⁻¹, at most RetireMax (which New keeps at least
// RetireBase).
func (s *Source) retireSpacing(n int) time.Duration {
	return doubled(s.opts.RetireBase, n, s.opts.RetireMax)
}

// Renew starts a token request now, even while backing off, and waits for it
// or ctx; but not before the provider's own Retry-After: then it answers an
// *UnavailableError with what is left of it, and no token request goes out.
func (s *Source) Renew(ctx context.Context) error {
	s.mu.Lock()
	if st := s.snap.Load(); s.flight == nil && time.Now().Before(st.waitUntil) {
		s.mu.Unlock()
		return &UnavailableError{RetryAfter: time.Until(st.waitUntil), Err: fmt.Errorf("the provider asked for no token request before %s (Retry-After): %w",
			st.waitUntil.UTC().Format(time.RFC3339), st.err)}
	}
	f := s.startLocked(true)
	s.mu.Unlock()
	if f == nil {
		return ErrStopped
	}
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// logoutLocked retires tok at the provider in the background, bounded by
// Timeout. s.mu must be held.
func (s *Source) logoutLocked(tok *grants.Token) {
	if s.stopped || s.opts.Logout == nil || tok == nil || !time.Now().Before(tok.Expiry) {
		return
	}
	s.logouts.Go(func() { s.logoutNow(tok) })
}

func (s *Source) logoutNow(tok *grants.Token) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	defer cancel()
	if err := s.opts.Logout(ctx, tok); err != nil {
		s.log.Warn("logout failed", zap.Error(err))
		return
	}
	s.log.Info("token logged out")
}

// Stop ends the source: the timer is stopped, a token request in flight is
// abandoned, no token request of the source outlives the call, and Get
// answers ErrStopped from then on. With logout set, the current token is
// retired at the provider (best effort): that logout, like those of tokens
// retired before, runs on in the background, bounded by Timeout, so that
// stopping many sources together takes one Timeout, not one each;
// WaitLogouts waits for them.
func (s *Source) Stop(logout bool) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.cancel()
	s.mu.Unlock()
	s.wg.Wait()
	// Get no longer serves the token (it answers ErrStopped), nor does
	// Retire retire it.
	s.mu.Lock()
	st := s.snap.Load()
	s.snap.Store(&snapshot{err: st.err, failures: st.failures})
	if logout && st.tok != nil && s.opts.Logout != nil && time.Now().Before(st.tok.Expiry) {
		s.logouts.Go(func() { s.logoutNow(st.tok) })
	}
	s.mu.Unlock()
}

// WaitLogouts waits for the source's logouts in flight, each bounded by
// Timeout.
func (s *Source) WaitLogouts() { s.logouts.Wait() }

// Status is the state of a source, for the admin API. It holds no secret.
type Status struct {
	State       string     `json:"state"` // idle, valid, renewing, backoff or stopped
	Expiry      *time.Time `json:"expiry,omitempty"`
	RenewAt     *time.Time `json:"renew_at,omitempty"`
	RetryAt     *time.Time `json:"retry_at,omitempty"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Requests    int64      `json:"token_requests"`
	Failures    int64      `json:"token_failures"`
}

// Status reports the source's state: idle (no token yet or lapsed),
// valid, renewing, backoff or stopped.
func (s *Source) Status() Status {
	st := s.snap.Load()
	now := time.Now()
	out := Status{Requests: s.requests.Load(), Failures: s.failures.Load()}
	valid := st.tok != nil && now.Before(st.tok.Expiry)
	switch {
	case s.isStopped():
		out.State = "stopped"
	case s.inflight.Load():
		out.State = "renewing"
	case now.Before(st.retryAt):
		out.State = "backoff"
	case valid:
		out.State = "valid"
	default:
		out.State = "idle"
	}
	if valid {
		e, r := st.tok.Expiry, st.renewAt
		out.Expiry, out.RenewAt = &e, &r
	}
	if now.Before(st.retryAt) {
		r := st.retryAt
		out.RetryAt = &r
	}
	if ns := s.lastSuccess.Load(); ns != 0 {
		t := time.Unix(0, ns)
		out.LastSuccess = &t
	}
	if st.err != nil {
		out.LastError = st.err.Error()
	}
	return out
}
