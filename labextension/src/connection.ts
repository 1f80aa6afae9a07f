/**
 * The lab's connection to the Spindel hub: a peer of kind "ui".
 *
 * Everything is pushed by the hub (no polling): the peer list on every join,
 * leave or change, the topic list whenever topics change. The topic list is
 * also fetched once per connection over REST, since the hub only pushes
 * changes. Actions (follow, fork, merge, claim) are requests over this
 * WebSocket, where the hub knows who sends them.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { packFrame, unpackFrame } from './frames';

/** A connected peer, as `{base_url}spindel/api/peers` lists it. */
export interface IPeer {
  name: string;
  kind: string;
  contexts: string[];
  since: string;
  /** The Jupyter kernel id of a kernel peer, else "". */
  kernel: string;
  /** "own" for peers of this server, "invited" for peers that joined with an invite. */
  scope?: string;
  /** The user the peer acts for. */
  user?: string;
  /** The hub the peer is connected to (in a mesh of several, see docs/federation.md). */
  hub?: string;
  /** false for a peer of another hub of the mesh. */
  local?: boolean;
}

/** A topic held by the hub, as `{base_url}spindel/api/topics` lists it. */
export interface ITopic {
  name: string;
  /** "lww" for plain last-writer-wins values, else the CRDT type's name. */
  kind: string;
  subscribers: number;
  size: number;
  summary: string;
  /** The user whose topic it is (who created it), if the hub recorded one. */
  owner?: string;
  /** Whether users other than its owner only "read" it or "write" it too. */
  others?: 'read' | 'write';
}

/** A workspace, as `{base_url}spindel/api/workspaces` lists it and the hub pushes it. */
export interface IWorkspace {
  name: string;
  /** The writer lease: the peer holding it and when it ends (unix seconds), or null. */
  owner: { peer: string; expires: number } | null;
  /** The current commit (sha256 hex). */
  head: string;
  fork_of: { workspace: string; head: string } | null;
  topics: string[];
  /** Unix seconds. */
  created: number;
  updated: number;
  /** The notebook it is published from, relative to the server root, or null. */
  path: string | null;
  publisher: string | null;
  /** Who follows it, and the server file the hub keeps for each (null: a copy of the follower's own);
   * in a mesh of hubs, the follower's hub too. */
  followers: { peer: string; path: string | null; hub?: string }[];
  /** In a mesh of hubs: the hub that made the head, and the one whose server has the notebook file. */
  hub?: string;
  path_hub?: string;
  /** Why this server's copies of it are not at its head (that head could not be brought here yet). */
  behind?: string;
  /** In the answer to a follow: the followed copy's path. */
  copy?: string;
}

/** A conflicting cell of a refused merge: the three versions of its source (null where deleted). */
export interface IConflict {
  index: number;
  id: string;
  base: string | null;
  ours: string | null;
  theirs: string | null;
}

/** A request the hub refused: its `{message, code}` (and a merge's conflicts). */
export class SpindelRequestError extends Error {
  constructor(
    /** The HTTP status of a refused REST request; 0 for a request over the WebSocket. */
    readonly status: number,
    readonly code: string,
    message: string,
    readonly conflicts: IConflict[] = []
  ) {
    super(message);
    this.name = 'SpindelRequestError';
  }
}

export type Status = 'connecting' | 'connected' | 'offline';

/** Delays between reconnection attempts grow from the first to the last, doubling. */
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
/** How long a request over the WebSocket waits for the hub's answer. */
const REQUEST_TIMEOUT_MS = 60000;

/** Between half and all of `delay`, at random: after a hub restart, pages come back spread out. */
export function jittered(delay: number): number {
  return delay * (0.5 + Math.random() * 0.5);
}

function randomId(length: number): string {
  const bytes = new Uint8Array(length);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, b => (b % 36).toString(36)).join('');
}

/** A live connection to the hub, reconnecting with backoff when it drops. */
export class SpindelConnection implements IDisposable {
  constructor(options: SpindelConnection.IOptions = {}) {
    this.serverSettings = options.serverSettings ?? ServerConnection.makeSettings();
    this._name = `lab-${randomId(6)}`;
    this.session = randomId(16);
  }

  readonly serverSettings: ServerConnection.ISettings;
  /** Identifies this connection across reconnects: the hub replaces a stale socket of the same session. */
  readonly session: string;

  /** The peer name this panel connects under. */
  get name(): string {
    return this._name;
  }

  get status(): Status {
    return this._status;
  }

  /** Why the last connection failed or was refused, if it did. */
  get lastError(): string {
    return this._lastError;
  }

  get peers(): readonly IPeer[] {
    return this._peers;
  }

  get topics(): readonly ITopic[] {
    return this._topics;
  }

  get workspaces(): readonly IWorkspace[] {
    return this._workspaces;
  }

  /** Emitted whenever the workspace list changes (pushed by the hub, or fetched on connect). */
  get workspacesChanged(): ISignal<this, void> {
    return this._workspacesChanged;
  }

  /** Emitted whenever the status, the peers, the topics or the workspaces change. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Open the connection (no-op when one is open or opening). */
  connect(): void {
    if (this._disposed || this._socket) {
      return;
    }
    this._clearTimer();
    const settings = this.serverSettings;
    let url = URLExt.join(settings.wsUrl, 'spindel/ws');
    if (settings.token) {
      url += `?token=${encodeURIComponent(settings.token)}`;
    }
    let socket: WebSocket;
    try {
      socket = new settings.WebSocket(url);
    } catch (err) {
      this._lastError = String(err);
      this._scheduleReconnect();
      return;
    }
    socket.binaryType = 'arraybuffer';
    this._socket = socket;
    socket.onopen = () => {
      socket.send(
        packFrame({ t: 'hello', name: this._name, kind: 'ui', session: this.session })
      );
    };
    socket.onmessage = event => this._onMessage(socket, event);
    socket.onclose = event => this._onClose(socket, event);
  }

  /** Drop the current connection (if any) and connect again at once. */
  reconnect(): void {
    this._delay = BACKOFF_FIRST_MS;
    const socket = this._socket;
    if (socket) {
      this._detach(socket);
      socket.close(1000, 'reconnect');
    }
    this._lastError = '';
    this._setStatus('connecting');
    this.connect();
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._clearTimer();
    const socket = this._socket;
    if (socket) {
      this._detach(socket);
      socket.close(1000, 'disposed');
    }
    Signal.clearData(this);
  }

  private _onMessage(socket: WebSocket, event: MessageEvent): void {
    if (socket !== this._socket || !(event.data instanceof ArrayBuffer)) {
      return;
    }
    let header, body;
    try {
      ({ header, body } = unpackFrame(event.data));
    } catch (err) {
      console.warn('spindel: ignored a frame that does not decode', err);
      return;
    }
    switch (header.t) {
      case 'rep':
        this._onReply(header, body);
        break;
      case 'welcome':
        this._delay = BACKOFF_FIRST_MS;
        this._lastError = '';
        if (typeof header.name === 'string') {
          this._name = header.name;
        }
        this._setStatus('connected');
        void this._fetchTopics();
        void this._fetchWorkspaces();
        break;
      case 'error':
        this._onError(String(header.code ?? ''), String(header.message ?? ''));
        break;
      case 'event':
        if (header.event === 'peers' && Array.isArray(body)) {
          this._peers = body as IPeer[];
          this._changed.emit();
        } else if (header.event === 'topics' && Array.isArray(body)) {
          this._topicsVersion += 1;
          this._topics = body as ITopic[];
          this._changed.emit();
        } else if (header.event === 'workspaces' && Array.isArray(body)) {
          this._workspacesVersion += 1;
          this._setWorkspaces(body as IWorkspace[]);
        }
        break;
      default:
        break;
    }
  }

  private _onError(code: string, message: string): void {
    this._lastError = message || code;
    if (this._status !== 'connected') {
      // Refused at hello: a name clash gets a fresh name on the next attempt.
      if (code === 'name_taken') {
        this._name = `lab-${randomId(6)}`;
        this._delay = BACKOFF_FIRST_MS;
      }
      this._socket?.close(1000, 'refused');
    } else {
      console.warn(`spindel: the hub reported ${code}: ${message}`);
    }
    this._changed.emit();
  }

  private _onClose(socket: WebSocket, event: CloseEvent): void {
    if (socket !== this._socket) {
      return;
    }
    this._detach(socket);
    if (!this._lastError && event.code !== 1000) {
      this._lastError = event.reason || 'cannot reach the hub';
    }
    this._scheduleReconnect();
  }

  private _detach(socket: WebSocket): void {
    socket.onopen = socket.onmessage = socket.onclose = null;
    if (socket === this._socket) {
      this._socket = null;
    }
    this._peers = [];
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const waiting of pending) {
      waiting.reject(
        new SpindelRequestError(0, 'peer_lost', 'lost the connection to the hub before it answered; try again')
      );
    }
  }

  /**
   * Ask the hub for operation `op` (e.g. `workspace.follow`) over this peer's WebSocket.
   *
   * Resolves to the hub's answer; a refusal rejects with a `SpindelRequestError`
   * carrying its `{message, code}` (and a merge's conflicts).
   */
  call(op: string, body: unknown): Promise<unknown> {
    const socket = this._socket;
    if (!socket || this._status !== 'connected') {
      return Promise.reject(
        new SpindelRequestError(0, 'not_connected', 'not connected to the hub; wait for it to reconnect')
      );
    }
    const id = this._nextId++;
    return new Promise<unknown>((resolve, reject) => {
      const timer = window.setTimeout(() => {
        if (this._pending.delete(id)) {
          reject(new SpindelRequestError(0, 'timeout', `the hub did not answer ${op} within ${REQUEST_TIMEOUT_MS / 1000} s`));
        }
      }, REQUEST_TIMEOUT_MS);
      this._pending.set(id, {
        resolve: value => {
          window.clearTimeout(timer);
          resolve(value);
        },
        reject: error => {
          window.clearTimeout(timer);
          reject(error);
        }
      });
      socket.send(packFrame({ t: 'req', id, op }, body));
    });
  }

  private _onReply(header: { [key: string]: unknown }, body: unknown): void {
    const id = typeof header.re === 'number' ? header.re : -1;
    const waiting = this._pending.get(id);
    if (!waiting) {
      return;
    }
    this._pending.delete(id);
    const error = header.error as { code?: unknown; message?: unknown; conflicts?: unknown } | undefined;
    if (error) {
      const conflicts = Array.isArray(error.conflicts) ? (error.conflicts as IConflict[]) : [];
      waiting.reject(
        new SpindelRequestError(0, String(error.code ?? 'error'), String(error.message ?? 'refused'), conflicts)
      );
    } else {
      waiting.resolve(body);
    }
  }

  private _scheduleReconnect(): void {
    this._setStatus('offline');
    if (this._disposed) {
      return;
    }
    this._clearTimer();
    const delay = jittered(this._delay);
    this._delay = Math.min(this._delay * 2, BACKOFF_MAX_MS);
    this._timer = window.setTimeout(() => {
      this._timer = 0;
      this.connect();
    }, delay);
  }

  private _clearTimer(): void {
    if (this._timer) {
      window.clearTimeout(this._timer);
      this._timer = 0;
    }
  }

  private _setStatus(status: Status): void {
    if (status !== this._status) {
      this._status = status;
      this._changed.emit();
    }
  }

  /** The topic list as of now; an event that arrives meanwhile is newer and wins. */
  private async _fetchTopics(): Promise<void> {
    const version = this._topicsVersion;
    const settings = this.serverSettings;
    try {
      const url = URLExt.join(settings.baseUrl, 'spindel/api/topics');
      const response = await ServerConnection.makeRequest(url, {}, settings);
      if (!response.ok) {
        throw new ServerConnection.ResponseError(response);
      }
      const topics = (await response.json()) as ITopic[];
      if (version === this._topicsVersion && !this._disposed) {
        this._topics = topics;
        this._changed.emit();
      }
    } catch (err) {
      console.warn('spindel: could not list topics', err);
    }
  }

  /** The workspace list as of now; an event that arrives meanwhile is newer and wins. */
  private async _fetchWorkspaces(): Promise<void> {
    const version = this._workspacesVersion;
    try {
      const workspaces = (await this.request('GET', 'workspaces')) as IWorkspace[];
      if (version === this._workspacesVersion && !this._disposed && Array.isArray(workspaces)) {
        this._setWorkspaces(workspaces);
      }
    } catch (err) {
      console.warn('spindel: could not list workspaces', err);
    }
  }

  private _setWorkspaces(workspaces: IWorkspace[]): void {
    this._workspaces = workspaces;
    this._workspacesChanged.emit();
    this._changed.emit();
  }

  /**
   * A JSON request to `{base_url}spindel/api/PATH` with the page's Jupyter login.
   *
   * Resolves to the decoded answer; a refusal rejects with a `SpindelRequestError`
   * carrying the hub's `{message, code}` (and a merge's conflicts).
   */
  async request(method: string, path: string, body?: unknown): Promise<unknown> {
    const settings = this.serverSettings;
    const url = URLExt.join(settings.baseUrl, 'spindel/api', path);
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, settings);
    } catch (err) {
      throw new SpindelRequestError(0, 'network', `cannot reach the server: ${String(err)}`);
    }
    const text = await response.text();
    let data: any = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message =
        (data && typeof data.message === 'string' && data.message) ||
        `${response.status} ${response.statusText}`.trim();
      const code = (data && typeof data.code === 'string' && data.code) || `http_${response.status}`;
      const conflicts = data && Array.isArray(data.conflicts) ? (data.conflicts as IConflict[]) : [];
      throw new SpindelRequestError(response.status, code, message, conflicts);
    }
    return data;
  }

  private _name: string;
  private _socket: WebSocket | null = null;
  /** "connecting" until the first welcome or failure; retries after a failure stay "offline". */
  private _status: Status = 'connecting';
  private _lastError = '';
  private _peers: IPeer[] = [];
  private _topics: ITopic[] = [];
  private _topicsVersion = 0;
  private _workspaces: IWorkspace[] = [];
  private _workspacesVersion = 0;
  private _workspacesChanged = new Signal<this, void>(this);
  private _delay = BACKOFF_FIRST_MS;
  private _timer = 0;
  private _nextId = 1;
  private _pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}

export namespace SpindelConnection {
  export interface IOptions {
    serverSettings?: ServerConnection.ISettings;
  }
}
