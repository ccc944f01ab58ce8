// The customer and organizer flow against a running server. Exits non-zero on any answer it
// did not expect. API_URL (the /graphql endpoint), ORGANIZER_TOKEN and CUSTOMER_TOKEN come
// from the environment.
import { makeClient } from "./client";
import { graphql } from "./gql";

const CreateEvent = graphql(`
  mutation CreateEvent($input: CreateEventInput!) {
    createEvent(input: $input) {
      ... on EventPayload {
        event {
          id
          name
          startsAt
          capacity
          ticketsAvailable
        }
      }
      ... on Error {
        message
      }
    }
  }
`);

// What every reservation mutation reads back on success.
graphql(`
  fragment Booked on ReservationPayload {
    reservation {
      id
      quantity
      status
    }
    event {
      id
      ticketsAvailable
    }
  }
`);

const CreateReservation = graphql(`
  mutation CreateReservation($input: CreateReservationInput!) {
    createReservation(input: $input) {
      ...Booked
      ... on Error {
        message
      }
    }
  }
`);

const UpdateReservation = graphql(`
  mutation UpdateReservation($input: UpdateReservationInput!) {
    updateReservation(input: $input) {
      ...Booked
      ... on Error {
        message
      }
      ... on NotEnoughTickets {
        requested
        available
      }
    }
  }
`);

const CancelReservation = graphql(`
  mutation CancelReservation($input: CancelReservationInput!) {
    cancelReservation(input: $input) {
      ...Booked
      ... on Error {
        message
      }
    }
  }
`);

const MyReservations = graphql(`
  query MyReservations {
    myReservations(first: 20) {
      totalCount
      edges {
        node {
          id
          quantity
          status
          createdAt
          event {
            id
            name
          }
        }
      }
    }
  }
`);

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function expect(condition: boolean, what: string, answer: unknown): asserts condition {
  if (!condition) throw new Error(`unexpected answer (${what}): ${JSON.stringify(answer)}`);
}

async function main(): Promise<void> {
  const url = env("API_URL");
  const organizer = makeClient(url, env("ORGANIZER_TOKEN"));
  const customer = makeClient(url, env("CUSTOMER_TOKEN"));

  // The organizer puts an event on sale.
  const startsAt = new Date(Date.now() + 30 * 24 * 3600 * 1000).toISOString();
  const created = await organizer.mutate({
    mutation: CreateEvent,
    variables: { input: { name: "Client example night", venue: "Hall 1", startsAt, capacity: 5 } },
  });
  const event = created.data?.createEvent;
  expect(event?.__typename === "EventPayload", "createEvent", created);
  // DateTime is typed as string: it parses as the instant that was sent.
  expect(Date.parse(event.event.startsAt) === Date.parse(startsAt), "startsAt", event);
  const eventId = event.event.id;

  // The customer reserves 2 tickets, then 1 more.
  const reserved = await customer.mutate({
    mutation: CreateReservation,
    variables: { input: { eventId, quantity: 2 } },
  });
  const reservation = reserved.data?.createReservation;
  expect(reservation?.__typename === "ReservationPayload", "createReservation", reserved);
  expect(reservation.event.ticketsAvailable === 3, "tickets after reserving", reservation);
  const reservationId = reservation.reservation.id;

  const increased = await customer.mutate({
    mutation: UpdateReservation,
    variables: { input: { reservationId, operation: "INCREASE", quantity: 1 } },
  });
  const afterIncrease = increased.data?.updateReservation;
  expect(afterIncrease?.__typename === "ReservationPayload", "increase", increased);
  expect(afterIncrease.reservation.quantity === 3, "quantity after increase", afterIncrease);

  // Asking for more than is left is a typed refusal. `message` is read through the Error
  // interface: Apollo Client keeps it only because possibleTypes says NotEnoughTickets
  // implements Error.
  const tooMany = await customer.mutate({
    mutation: UpdateReservation,
    variables: { input: { reservationId, operation: "INCREASE", quantity: 10 } },
  });
  const refusal = tooMany.data?.updateReservation;
  expect(refusal?.__typename === "NotEnoughTickets", "increase past capacity", tooMany);
  expect(typeof refusal.message === "string" && refusal.message !== "", "Error.message", refusal);
  expect(refusal.available === 2 && refusal.requested === 10, "NotEnoughTickets", refusal);

  // The customer sees the reservation among theirs.
  const mine = await customer.query({ query: MyReservations, fetchPolicy: "network-only" });
  const listed = mine.data?.myReservations.edges.find((edge) => edge.node.id === reservationId);
  expect(listed?.node.quantity === 3 && listed.node.status === "ACTIVE", "myReservations", mine);
  expect(!Number.isNaN(Date.parse(listed.node.createdAt)), "createdAt", listed);

  // Cancelling gives the tickets back.
  const cancelled = await customer.mutate({
    mutation: CancelReservation,
    variables: { input: { reservationId } },
  });
  const afterCancel = cancelled.data?.cancelReservation;
  expect(afterCancel?.__typename === "ReservationPayload", "cancelReservation", cancelled);
  expect(afterCancel.reservation.status === "CANCELLED", "status after cancel", afterCancel);
  expect(afterCancel.event.ticketsAvailable === 5, "tickets after cancel", afterCancel);

  console.log(JSON.stringify({ ok: true, eventId, reservationId, refusal: refusal.message }));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
