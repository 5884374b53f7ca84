// @parley/livekit: persist @livekit/agents sessions to Parley and restore them.
export { ChatContextResult, ParleyClient, ParleyError, chatItemId, type Logger, type ParleyClientOptions, type ReportSessionResult } from './client';
export { SessionRecorder, parseDispatchMetadata, persistSession, type DispatchMetadata, type PersistOptions, type RecorderOptions, type Report } from './session';
export { chatContextFromJSON, fromDict, isRecorded, toDict, type ItemDict } from './agentsjson';
