package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/parley-dev/parley/internal/config"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/rpc"
	"github.com/parley-dev/parley/internal/webhook"
	"github.com/parley-dev/parley/internal/webhookhttp"
)

// startWebhooks runs this replica's dispatcher of outbound webhooks, which
// reaches only the addresses the PARLEY_WEBHOOK_* settings allow, and its
// flusher of conversation.items_appended batches. It returns the hourly
// job that prunes old events and the API of endpoints and events, which
// refuses at registration the URLs the dispatcher would.
func (a *replica) startWebhooks(ctx context.Context, cfg config.Config, log *slog.Logger) (prune func(ctx context.Context), api *rpc.WebhookServer) {
	store := postgres.NewWebhookStore(a.db)
	policy := webhookhttp.Policy{AllowHTTP: cfg.WebhookAllowHTTP, Allowed: cfg.WebhookAllowedNetworks}
	sender := webhookhttp.NewSender(webhookhttp.NewClient(policy, cfg.WebhookTimeout))
	// The lease outlasts an attempt, so no other replica repeats one that
	// is still under way.
	dispatcher := webhook.NewDispatcher(store, sender, webhook.DispatcherOptions{Lease: max(10*time.Second, 4*cfg.WebhookTimeout), Log: log})
	a.goBackground(ctx, func(ctx context.Context) { _ = dispatcher.Run(ctx) })
	flusher := webhook.NewFlusher(store, webhook.FlusherOptions{Log: log})
	a.goBackground(ctx, func(ctx context.Context) { _ = flusher.Run(ctx) })
	events := webhook.NewEvents(store, webhook.Options{Log: log})
	return events.Prune, rpc.NewWebhookServer(webhook.NewService(store, policy, webhook.Options{Log: log}), events, log)
}
