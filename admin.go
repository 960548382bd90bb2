package upstreamoauth

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
)

func init() {
	caddy.RegisterModule(adminSources{})
}

// adminSources is the admin API module of upstream_oauth, on Caddy's admin
// endpoint:
//
//	GET  /upstream_oauth/sources               every token source
//	GET  /upstream_oauth/sources/<name>        the sources named <name>
//	POST /upstream_oauth/sources/<name>/renew  renew them now, and wait
//
// Answers are JSON arrays of sourceStatus; they hold no secret and no token.
type adminSources struct {
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (adminSources) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.upstream_oauth",
		New: func() caddy.Module { return new(adminSources) },
	}
}

// Provision registers the metrics on the config's registry, which the
// admin /metrics serves, so that they are there whatever the config holds.
func (a *adminSources) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger(a)
	return registerMetrics(ctx.GetMetricsRegistry())
}

const adminPrefix = "/upstream_oauth/sources"

// Routes returns the routes of /upstream_oauth/sources.
func (a *adminSources) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.handleList)},
		{Pattern: adminPrefix + "/", Handler: caddy.AdminHandlerFunc(a.handleSource)},
	}
}

// sourceStatus is a token source as the admin API shows it: its
// description and its state.
type sourceStatus struct {
	sourceInfo
	cache.Status
}

// adminStatus describes p for the admin API.
func (p *pooledSource) adminStatus() sourceStatus {
	return sourceStatus{sourceInfo: p.info, Status: p.Status()}
}

// handleList answers GET /upstream_oauth/sources.
func (a *adminSources) handleList(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	return writeStatuses(w, http.StatusOK, liveSources())
}

// handleSource answers GET /upstream_oauth/sources/<name> and POST
// /upstream_oauth/sources/<name>/renew.
func (a *adminSources) handleSource(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, adminPrefix+"/")
	name, renew := strings.CutSuffix(rest, "/renew")
	if renew && r.Method != http.MethodPost {
		return methodNotAllowed(w, http.MethodPost)
	}
	if !renew && r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	named := sourcesNamed(name)
	if len(named) == 0 {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no token source named %q", name)}
	}
	if !renew {
		return writeStatuses(w, http.StatusOK, named)
	}

	a.logger.Info("token renewal requested through the admin API",
		zap.String("source", name), zap.String("remote_addr", r.RemoteAddr))
	var errs []error
	var wait time.Duration // the longest Retry-After of a provider that asked to wait
	for _, p := range named {
		if err := p.Renew(r.Context()); err != nil {
			errs = append(errs, err)
			if ue, ok := errors.AsType[*cache.UnavailableError](err); ok {
				wait = max(wait, ue.RetryAfter)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		status := http.StatusBadGateway
		if wait > 0 && len(errs) == len(named) {
			status = http.StatusTooManyRequests
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		}
		return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf("renewing %q: %v", name, err)}
	}
	return writeStatuses(w, http.StatusOK, named)
}

// writeStatuses writes the statuses of srcs as a JSON array, sorted by name
// and token URL.
func writeStatuses(w http.ResponseWriter, code int, srcs []*pooledSource) error {
	out := make([]sourceStatus, 0, len(srcs))
	for _, p := range srcs {
		out = append(out, p.adminStatus())
	}
	slices.SortFunc(out, func(a, b sourceStatus) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.TokenURL, b.TokenURL), cmp.Compare(a.ClientID, b.ClientID))
	})
	body, err := json.Marshal(out)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, err = w.Write(body)
	return err
}

func methodNotAllowed(w http.ResponseWriter, allow string) error {
	w.Header().Set("Allow", allow)
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
}

// Interface guards.
var (
	_ caddy.AdminRouter = (*adminSources)(nil)
	_ caddy.Provisioner = (*adminSources)(nil)
)
