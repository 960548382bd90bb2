package upstreamoauth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Token sources outlive the config that made them (a reload that keeps a
// source keeps its token), so they cannot hold what belongs to one config:
// its storage (which an unload may close), its events app, its logger. Each
// config that has an upstream_oauth handler leaves these here when the
// handler is provisioned, and a source resolves them when it uses them: the
// running config's, as caddy.ActiveContext names it. That stays the old
// config until a new one has started, and stays it when a reload fails, so
// a config that was provisioned and then failed to start is never used. A
// config's entry goes when its context ends (unloaded, or failed to load).
//
// A config is known by its metrics registry, which Caddy makes anew for
// every config.
var configs = struct {
	sync.Mutex
	byRegistry map[*prometheus.Registry]*configResources
	seq        uint64
}{byRegistry: map[*prometheus.Registry]*configResources{}}

// configResources are what the token sources use of one config.
type configResources struct {
	ctx     caddy.Context     // a handler's: its module is the events' origin
	storage certmagic.Storage // the config's storage (file_system by default)
	events  *caddyevents.App  // nil: the config has no events app
	logger  *zap.Logger       // the handler's logger of that config
	seq     uint64            // provision order
}

// bindConfig records what the config that ctx belongs to offers the token
// sources, once per config. The http app loads the events app before its
// handlers; a context without one (a bare test context) emits no events.
func bindConfig(ctx caddy.Context) error {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return nil
	}
	configs.Lock()
	_, known := configs.byRegistry[reg]
	configs.Unlock()
	if known {
		return nil
	}
	res := &configResources{ctx: ctx, storage: storageOf(ctx), logger: ctx.Logger()}
	v, err := ctx.AppIfConfigured("events")
	switch {
	case errors.Is(err, caddy.ErrNotConfigured):
	case err != nil:
		return fmt.Errorf("getting events app: %v", err)
	default:
		app, ok := v.(*caddyevents.App)
		if !ok {
			return fmt.Errorf("events app is %T", v)
		}
		res.events = app
	}
	configs.Lock()
	defer configs.Unlock()
	if _, known := configs.byRegistry[reg]; known {
		return nil
	}
	configs.seq++
	res.seq = configs.seq
	configs.byRegistry[reg] = res
	context.AfterFunc(ctx, func() {
		configs.Lock()
		defer configs.Unlock()
		if configs.byRegistry[reg] == res {
			delete(configs.byRegistry, reg)
		}
	})
	return nil
}

// storageOf is ctx's storage, nil for a context that belongs to no config
// (as tests make: caddy.Context.Storage panics on one).
func storageOf(ctx caddy.Context) (st certmagic.Storage) {
	defer func() {
		if recover() != nil {
			st = nil
		}
	}()
	return ctx.Storage()
}

// runningConfig is what the running config offers; failing that (it has no
// upstream_oauth handler, or none is running), what the newest config whose
// context has not ended offers. Nil when there is none.
func runningConfig() *configResources {
	active := caddy.ActiveContext()
	reg := active.GetMetricsRegistry()
	configs.Lock()
	defer configs.Unlock()
	if res, ok := configs.byRegistry[reg]; ok && reg != nil && res.ctx.Err() == nil {
		return res
	}
	var newest *configResources
	for _, res := range configs.byRegistry {
		if res.ctx.Err() == nil && (newest == nil || res.seq > newest.seq) {
			newest = res
		}
	}
	return newest
}

// runningStorage is the storage of the running config: shared tokens live
// there.
func runningStorage() certmagic.Storage {
	if res := runningConfig(); res != nil {
		return res.storage
	}
	return nil
}

// runningLogger writes the token sources' log lines through the logger of
// the running config, so that the config's logging options apply to them,
// and to a closed log of an unloaded config never. With no config
// running, it writes to Caddy's default logger.
var runningLogger = zap.New(runningCore{}).Named("http.handlers.upstream_oauth")

// runningCore is the zapcore.Core of runningLogger: it resolves the running
// config's core on each entry, so it is meant for lines that are few (none
// on the request path).
type runningCore struct{ fields []zapcore.Field }

// base is the running config's core, without the fields.
func (runningCore) base() zapcore.Core {
	if res := runningConfig(); res != nil {
		return res.logger.Core()
	}
	return caddy.Log().Core()
}

func (c runningCore) core() zapcore.Core {
	if len(c.fields) == 0 {
		return c.base()
	}
	return c.base().With(c.fields)
}

func (c runningCore) Enabled(l zapcore.Level) bool { return c.base().Enabled(l) }

func (c runningCore) With(fields []zapcore.Field) zapcore.Core {
	return runningCore{fields: append(slices.Clip(c.fields), fields...)}
}

func (c runningCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return c.core().Check(e, ce)
}

func (c runningCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	return c.core().Write(e, fields)
}

func (c runningCore) Sync() error { return c.core().Sync() }
