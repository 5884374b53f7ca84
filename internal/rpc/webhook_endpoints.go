package rpc

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/webhook"
)

// WebhookServer serves parley.v1.WebhookService: the caller's outbound
// webhook endpoints and the events delivered to them.
type WebhookServer struct {
	endpoints *webhook.Service
	events    *webhook.Events
	log       *slog.Logger
}

var _ parleyv1connect.WebhookServiceHandler = (*WebhookServer)(nil)

// NewWebhookServer returns a WebhookServer over endpoints and events.
func NewWebhookServer(endpoints *webhook.Service, events *webhook.Events, log *slog.Logger) *WebhookServer {
	return &WebhookServer{endpoints: endpoints, events: events, log: log}
}

// CreateEndpoint registers an endpoint of the caller and answers its
// secret, the only time it is shown.
func (s *WebhookServer) CreateEndpoint(ctx context.Context, req *connect.Request[parleyv1.CreateEndpointRequest]) (*connect.Response[parleyv1.CreateEndpointResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	e, secret, err := s.endpoints.RegisterEndpoint(ctx, p, req.Msg.GetUrl(), req.Msg.GetEventTypes())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.CreateEndpointResponse{Endpoint: webhookEndpointToProto(e), Secret: secret.Text()}), nil
}

// ListEndpoints lists the caller's endpoints, newest first.
func (s *WebhookServer) ListEndpoints(ctx context.Context, req *connect.Request[parleyv1.ListEndpointsRequest]) (*connect.Response[parleyv1.ListEndpointsResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	page, err := s.endpoints.ListEndpoints(ctx, p, int(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListEndpointsResponse{Endpoints: webhookEndpointsToProto(page.Endpoints), NextPageToken: page.NextPageToken}), nil
}

// GetEndpoint returns one of the caller's endpoints.
func (s *WebhookServer) GetEndpoint(ctx context.Context, req *connect.Request[parleyv1.GetEndpointRequest]) (*connect.Response[parleyv1.GetEndpointResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("endpoint_id", req.Msg.GetEndpointId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	e, err := s.endpoints.Endpoint(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.GetEndpointResponse{Endpoint: webhookEndpointToProto(e)}), nil
}

// DeleteEndpoint deletes one of the caller's endpoints.
func (s *WebhookServer) DeleteEndpoint(ctx context.Context, req *connect.Request[parleyv1.DeleteEndpointRequest]) (*connect.Response[parleyv1.DeleteEndpointResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("endpoint_id", req.Msg.GetEndpointId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	if err := s.endpoints.DeleteEndpoint(ctx, p, id); err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.DeleteEndpointResponse{}), nil
}

// RotateSecret gives one of the caller's endpoints a new secret; the older
// ones keep signing for the overlap.
func (s *WebhookServer) RotateSecret(ctx context.Context, req *connect.Request[parleyv1.RotateSecretRequest]) (*connect.Response[parleyv1.RotateSecretResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("endpoint_id", req.Msg.GetEndpointId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	secret, err := s.endpoints.RotateSecret(ctx, p, id, req.Msg.GetOverlap().AsDuration())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.RotateSecretResponse{Secret: secret.Text()}), nil
}

// ListEvents replays the caller's events after a cursor.
func (s *WebhookServer) ListEvents(ctx context.Context, req *connect.Request[parleyv1.ListEventsRequest]) (*connect.Response[parleyv1.ListEventsResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	events, cursor, err := s.events.ListEvents(ctx, p, req.Msg.GetCursor(), int(req.Msg.GetPageSize()))
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListEventsResponse{Events: webhookEventsToProto(events), Cursor: cursor}), nil
}

// ListDeliveries shows what became of one of the caller's events at each
// endpoint.
func (s *WebhookServer) ListDeliveries(ctx context.Context, req *connect.Request[parleyv1.ListDeliveriesRequest]) (*connect.Response[parleyv1.ListDeliveriesResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("event_id", req.Msg.GetEventId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	ds, err := s.events.Deliveries(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListDeliveriesResponse{Deliveries: webhookDeliveriesToProto(ds)}), nil
}

// Redeliver retries the parked deliveries of one of the caller's events.
func (s *WebhookServer) Redeliver(ctx context.Context, req *connect.Request[parleyv1.RedeliverRequest]) (*connect.Response[parleyv1.RedeliverResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("event_id", req.Msg.GetEventId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	n, err := s.events.Redeliver(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.RedeliverResponse{Redelivered: int32(n)}), nil
}

// ListEndpointDeliveries lists one of the caller's endpoints' deliveries
// in one state, across its events.
func (s *WebhookServer) ListEndpointDeliveries(ctx context.Context, req *connect.Request[parleyv1.ListEndpointDeliveriesRequest]) (*connect.Response[parleyv1.ListEndpointDeliveriesResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("endpoint_id", req.Msg.GetEndpointId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	page, err := s.events.ListEndpointDeliveries(ctx, p, webhook.DeliveryQuery{
		EndpointID: id, State: deliveryStateFromProto(req.Msg.GetState()),
		OldestFirst: req.Msg.GetOrder() == parleyv1.Order_ORDER_OLDEST_FIRST,
		PageSize:    int(req.Msg.GetPageSize()), PageToken: req.Msg.GetPageToken(),
	})
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ListEndpointDeliveriesResponse{Deliveries: webhookDeliveriesToProto(page.Deliveries), NextPageToken: page.NextPageToken}), nil
}

// RedeliverParked retries every parked delivery of one of the caller's
// endpoints, in order.
func (s *WebhookServer) RedeliverParked(ctx context.Context, req *connect.Request[parleyv1.RedeliverParkedRequest]) (*connect.Response[parleyv1.RedeliverParkedResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("endpoint_id", req.Msg.GetEndpointId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	n, err := s.events.RedeliverParked(ctx, p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.RedeliverParkedResponse{Redelivered: int32(n)}), nil
}

// EnableEndpoint re-enables one of the caller's endpoints that a 410
// disabled, redelivering its parked deliveries unless asked not to.
func (s *WebhookServer) EnableEndpoint(ctx context.Context, req *connect.Request[parleyv1.EnableEndpointRequest]) (*connect.Response[parleyv1.EnableEndpointResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("endpoint_id", req.Msg.GetEndpointId())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	e, n, err := s.endpoints.EnableEndpoint(ctx, p, id, req.Msg.GetKeepParked())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.EnableEndpointResponse{Endpoint: webhookEndpointToProto(e), Redelivered: int32(n)}), nil
}
