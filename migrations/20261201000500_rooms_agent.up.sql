-- A room carries its agent's job, so that every join token dispatches what
-- CreateRoom dispatched:
--   agent_name: the agent dispatched; NULL (rooms made before this column,
--     by an older replica, or with no agent configured) is whichever agent
--     PARLEY_LIVEKIT_AGENT_NAME names now, as before;
--   agent_metadata: CreateRoom's agent_metadata, NULL for none;
--   resume_seq: the seq of the conversation's last item when this room
--     resumed it (the agent restores up to there), NULL for a room that
--     started its conversation.
-- conversations.room_id names the newest room of the conversation; older
-- rooms keep their rooms.conversation_id (rooms_conversation_id_idx finds
-- them, active or not). Expand only: older replicas
-- neither read nor write these columns.
ALTER TABLE rooms
    ADD COLUMN agent_name text,
    ADD COLUMN agent_metadata text,
    ADD COLUMN resume_seq bigint;

