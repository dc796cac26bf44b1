export { meshServerOptions, meshClientOptions, peerIdentity, type Credentials } from './credentials.js';
