package rpc

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/account"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// UserServer serves parley.v1.UserService.
type UserServer struct {
	accounts *account.Service
	log      *slog.Logger
}

var _ parleyv1connect.UserServiceHandler = (*UserServer)(nil)

// NewUserServer returns a UserServer over accounts.
func NewUserServer(accounts *account.Service, log *slog.Logger) *UserServer {
	return &UserServer{accounts: accounts, log: log}
}

// GetProfile returns the calling user.
func (s *UserServer) GetProfile(ctx context.Context, _ *connect.Request[parleyv1.GetProfileRequest]) (*connect.Response[parleyv1.GetProfileResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	u, err := s.accounts.GetProfile(ctx, p)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.GetProfileResponse{User: userToProto(u)}), nil
}

// UpdateProfile changes the calling user's display name.
func (s *UserServer) UpdateProfile(ctx context.Context, req *connect.Request[parleyv1.UpdateProfileRequest]) (*connect.Response[parleyv1.UpdateProfileResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	u, err := s.accounts.UpdateProfile(ctx, p, req.Msg.GetDisplayName())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.UpdateProfileResponse{User: userToProto(u)}), nil
}
