-- livekit_sid is the sid LiveKit gave the room: from its answer to
-- CreateRoom, or from the first room_started when LiveKit was unreachable at
-- creation (NULL until then; rooms made before this column wait for theirs
-- too). A webhook event changes a room only when both its LiveKit name and
-- sid match. Expand only: older replicas neither read nor write it.
ALTER TABLE rooms ADD COLUMN livekit_sid text;
