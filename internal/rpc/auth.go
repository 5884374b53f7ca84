package rpc

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/parley-dev/parley/internal/account"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// AuthServer serves parley.v1.AuthService.
type AuthServer struct {
	accounts *account.Service
	log      *slog.Logger
}

var _ parleyv1connect.AuthServiceHandler = (*AuthServer)(nil)

// NewAuthServer returns an AuthServer over accounts.
func NewAuthServer(accounts *account.Service, log *slog.Logger) *AuthServer {
	return &AuthServer{accounts: accounts, log: log}
}

// Register creates a user and signs it in.
func (s *AuthServer) Register(ctx context.Context, req *connect.Request[parleyv1.RegisterRequest]) (*connect.Response[parleyv1.RegisterResponse], error) {
	u, pair, err := s.accounts.Register(ctx, req.Msg.GetEmail(), req.Msg.GetPassword(), req.Msg.GetDisplayName())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.RegisterResponse{User: userToProto(u), Tokens: tokenPairToProto(pair)}), nil
}

// Login signs a user in with email and password.
func (s *AuthServer) Login(ctx context.Context, req *connect.Request[parleyv1.LoginRequest]) (*connect.Response[parleyv1.LoginResponse], error) {
	u, pair, err := s.accounts.Login(ctx, req.Msg.GetEmail(), req.Msg.GetPassword())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.LoginResponse{User: userToProto(u), Tokens: tokenPairToProto(pair)}), nil
}

// Refresh spends a refresh token for a new pair.
func (s *AuthServer) Refresh(ctx context.Context, req *connect.Request[parleyv1.RefreshRequest]) (*connect.Response[parleyv1.RefreshResponse], error) {
	pair, err := s.accounts.Refresh(ctx, req.Msg.GetRefreshToken())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.RefreshResponse{Tokens: tokenPairToProto(pair)}), nil
}

// Logout revokes the calling access token and, if given, a refresh family.
func (s *AuthServer) Logout(ctx context.Context, req *connect.Request[parleyv1.LogoutRequest]) (*connect.Response[parleyv1.LogoutResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	if err := s.accounts.Logout(ctx, p, req.Msg.GetRefreshToken()); err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.LogoutResponse{}), nil
}

// ExchangeAgentKey trades an agent API key for an agent access token.
func (s *AuthServer) ExchangeAgentKey(ctx context.Context, req *connect.Request[parleyv1.ExchangeAgentKeyRequest]) (*connect.Response[parleyv1.ExchangeAgentKeyResponse], error) {
	tok, err := s.accounts.ExchangeAgentKey(ctx, req.Msg.GetApiKey())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	return connect.NewResponse(&parleyv1.ExchangeAgentKeyResponse{
		AccessToken: tok.Token,
		ExpiresAt:   timestamp(tok.ExpiresAt),
	}), nil
}
