package rpc

import (
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/webhook"
)

func webhookEndpointToProto(e webhook.Endpoint) *parleyv1.WebhookEndpoint {
	return &parleyv1.WebhookEndpoint{
		Id:             e.ID.String(),
		Url:            e.URL,
		EventTypes:     e.EventTypes,
		CreatedAt:      timestamp(e.CreatedAt),
		DisabledAt:     timestamp(e.DisabledAt),
		DisabledReason: e.DisabledReason,
	}
}

func webhookEndpointsToProto(es []webhook.Endpoint) []*parleyv1.WebhookEndpoint {
	out := make([]*parleyv1.WebhookEndpoint, len(es))
	for i, e := range es {
		out[i] = webhookEndpointToProto(e)
	}
	return out
}

func webhookEventsToProto(es []webhook.Event) []*parleyv1.WebhookEvent {
	out := make([]*parleyv1.WebhookEvent, len(es))
	for i, e := range es {
		out[i] = &parleyv1.WebhookEvent{
			Id:        e.ID.String(),
			Type:      e.Type,
			Payload:   string(e.Payload),
			CreatedAt: timestamp(e.CreatedAt),
		}
	}
	return out
}

var deliveryStates = map[webhook.DeliveryState]parleyv1.DeliveryState{
	webhook.DeliveryPending:   parleyv1.DeliveryState_DELIVERY_STATE_PENDING,
	webhook.DeliveryDelivered: parleyv1.DeliveryState_DELIVERY_STATE_DELIVERED,
	webhook.DeliveryParked:    parleyv1.DeliveryState_DELIVERY_STATE_PARKED,
}

func webhookDeliveriesToProto(ds []webhook.DeliveryStatus) []*parleyv1.WebhookDelivery {
	out := make([]*parleyv1.WebhookDelivery, len(ds))
	for i, d := range ds {
		out[i] = &parleyv1.WebhookDelivery{
			EndpointId:     d.EndpointID.String(),
			State:          deliveryStates[d.State],
			Attempts:       int32(d.Attempts),
			NextAttemptAt:  timestamp(d.NextAttemptAt),
			LastStatus:     int32(d.LastStatus),
			LastError:      d.LastError,
			FinishedAt:     timestamp(d.FinishedAt),
			EventId:        d.EventID.String(),
			EventType:      d.EventType,
			EventCreatedAt: timestamp(d.EventCreatedAt),
		}
	}
	return out
}

// deliveryStateFromProto is deliveryStates backwards; an unknown state is
// 0, which the domain refuses.
func deliveryStateFromProto(s parleyv1.DeliveryState) webhook.DeliveryState {
	for d, p := range deliveryStates {
		if p == s {
			return d
		}
	}
	return 0
}
