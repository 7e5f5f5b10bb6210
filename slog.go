package consullock

import (
	"context"
	"errors"
	"log/slog"
)

// SlogObserver returns an Observer that logs every event to logger: acquires,
// contention and releases at Debug, acquire timeouts at Info, renewal
// failures at Warn, losses and failed acquires or releases at Error. It logs
// keys, session IDs, fencing tokens and durations; never an ACL token or a
// lock's value.
func SlogObserver(logger *slog.Logger) Observer { return slogObserver{logger} }

type slogObserver struct{ l *slog.Logger }

func (o slogObserver) Acquired(e AcquireEvent) {
	level, msg := slog.LevelDebug, "lock acquired"
	switch {
	case errors.Is(e.Err, ErrNotAcquired):
		level, msg = slog.LevelInfo, "lock not acquired in time"
	case e.Err != nil:
		level, msg = slog.LevelError, "lock acquire failed"
	}
	attrs := []slog.Attr{slog.String("key", e.Key), slog.Duration("wait", e.Wait), slog.Int("attempts", e.Attempts)}
	if e.Err == nil {
		attrs = append(attrs, slog.Uint64("token", e.Token))
	} else {
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	o.l.LogAttrs(context.Background(), level, msg, attrs...)
}

func (o slogObserver) Contended(e ContendEvent) {
	o.l.LogAttrs(context.Background(), slog.LevelDebug, "lock held by another session",
		slog.String("key", e.Key), slog.String("holder_session", e.Holder))
}

func (o slogObserver) Released(e ReleaseEvent) {
	level, attrs := slog.LevelDebug, []slog.Attr{slog.String("key", e.Key), slog.Uint64("token", e.Token), slog.Duration("held", e.Held)}
	if e.Err != nil {
		level, attrs = slog.LevelError, append(attrs, slog.String("error", e.Err.Error()))
	}
	o.l.LogAttrs(context.Background(), level, "lock released", attrs...)
}

func (o slogObserver) RenewFailed(e RenewEvent) {
	o.l.LogAttrs(context.Background(), slog.LevelWarn, "session renewal failed",
		slog.String("session", e.Session), slog.String("error", e.Err.Error()))
}

func (o slogObserver) Lost(e LostEvent) {
	o.l.LogAttrs(context.Background(), slog.LevelError, "lock lost",
		slog.String("key", e.Key), slog.Uint64("token", e.Token), slog.Duration("held", e.Held), slog.String("cause", e.Cause.Error()))
}
