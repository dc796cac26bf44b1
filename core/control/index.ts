/** The discovery client library shared by the node proxy and the ingress (core/protocol/discovery.ts). */
export {
  ControlClient,
  ControlStreamError,
  systemTimers,
  DEFAULT_BACKOFF,
  DEFAULT_CONNECT_TIMEOUT_MS,
  MAX_PENDING_ACKS,
  type ControlClientOptions,
  type ControlClientStatus,
  type ControlClientEvents,
  type ResourceValues,
  type StreamErrorReason,
  type Timers,
} from './client.js';
